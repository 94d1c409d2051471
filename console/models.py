"""The console's tables (SQLAlchemy 2 ORM). The Alembic migrations create exactly these.

Scope: tenant → workspace → instance. Apps, nodes and access keys hang off an instance, so
every query an agent or operator makes is filtered by one instance row.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

# Seconds stored as a bucket start (unix time); two resolutions, see console/metrics.py.
RES_FINE = 10
RES_COARSE = 60


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in and out (SQLite hands back naive ones)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime: the console stores UTC only")
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        dict[str, Any]: JSON,
        list[Any]: JSON,
        datetime: UTCDateTime,
    }


class Tenant(Base):
    __tablename__ = "tenants"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(63), unique=True)


class Workspace(Base):
    __tablename__ = "workspaces"
    __table_args__ = (UniqueConstraint("tenant_id", "name"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(63))
    tenant: Mapped[Tenant] = relationship()


class Instance(Base):
    __tablename__ = "instances"
    __table_args__ = (UniqueConstraint("workspace_id", "instance_id"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    workspace_id: Mapped[int] = mapped_column(ForeignKey("workspaces.id", ondelete="CASCADE"))
    # The operator-visible instance ID (seed: shown in "environment info").
    instance_id: Mapped[str] = mapped_column(String(63))
    workspace: Mapped[Workspace] = relationship()


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    # "scrypt$n$r$p$salt_hex$hash_hex"
    password_hash: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column()


class AccessKey(Base):
    __tablename__ = "access_keys"
    id: Mapped[int] = mapped_column(primary_key=True)
    key_id: Mapped[str] = mapped_column(String(40), unique=True)
    # HMAC needs the secret itself on the server; it leaves the console only at creation.
    secret: Mapped[str] = mapped_column(String(128))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    instance_id: Mapped[int] = mapped_column(ForeignKey("instances.id", ondelete="CASCADE"))
    created_at: Mapped[datetime] = mapped_column()
    user: Mapped[User] = relationship()
    instance: Mapped[Instance] = relationship()


class Nonce(Base):
    """Nonces seen in the timestamp window, shared by replicas (R-CO-6)."""

    __tablename__ = "nonces"
    key_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    nonce: Mapped[str] = mapped_column(String(64), primary_key=True)
    expires_at: Mapped[int] = mapped_column(BigInteger, index=True)


class OperatorSession(Base):
    __tablename__ = "sessions"
    # SHA-256 of the cookie value: a leaked table hands out no sessions.
    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    csrf_token: Mapped[str] = mapped_column(String(64))
    instance_id: Mapped[int | None] = mapped_column(
        ForeignKey("instances.id", ondelete="SET NULL"), nullable=True
    )
    expires_at: Mapped[int] = mapped_column(BigInteger, index=True)
    user: Mapped[User] = relationship()


class App(Base):
    __tablename__ = "apps"
    __table_args__ = (UniqueConstraint("instance_id", "name"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    instance_id: Mapped[int] = mapped_column(ForeignKey("instances.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(63))
    ports: Mapped[list[Any]] = mapped_column()
    # The three exclusion lists of console.schemas.Params, as entered (canonical per entry).
    params: Mapped[dict[str, Any]] = mapped_column()
    created_at: Mapped[datetime] = mapped_column()


class Node(Base):
    """A node IP of an app, its hijack switch, its config version and its last status."""

    __tablename__ = "nodes"
    # One config per VM: an IP belongs to one app of an instance.
    __table_args__ = (UniqueConstraint("instance_id", "ip"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    app_id: Mapped[int] = mapped_column(ForeignKey("apps.id", ondelete="CASCADE"), index=True)
    instance_id: Mapped[int] = mapped_column(ForeignKey("instances.id", ondelete="CASCADE"))
    ip: Mapped[str] = mapped_column(String(45))
    hijack_enabled: Mapped[bool] = mapped_column(Boolean, default=False)
    # Bumped on every change of this node's desired config; starts at a time-based value so
    # a re-created node never repeats a version an agent still holds.
    config_version: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column()
    hostname: Mapped[str | None] = mapped_column(String(255), nullable=True)
    registered_at: Mapped[datetime | None] = mapped_column(nullable=True)
    last_seen: Mapped[datetime | None] = mapped_column(nullable=True)
    sidecar_status: Mapped[str | None] = mapped_column(String(16), nullable=True)
    healthy: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    sidecar_version: Mapped[str | None] = mapped_column(String(64), nullable=True)
    sidecar_created_at: Mapped[datetime | None] = mapped_column(nullable=True)
    backend: Mapped[str | None] = mapped_column(String(16), nullable=True)
    rule_digest: Mapped[str | None] = mapped_column(String(128), nullable=True)
    ipv6: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    status_at: Mapped[datetime | None] = mapped_column(nullable=True)
    app: Mapped[App] = relationship()


class GovernanceLimit(Base):
    __tablename__ = "governance_limits"
    app_id: Mapped[int] = mapped_column(ForeignKey("apps.id", ondelete="CASCADE"), primary_key=True)
    port: Mapped[int] = mapped_column(Integer, primary_key=True)
    max_requests: Mapped[int] = mapped_column(BigInteger)


class GovernanceChange(Base):
    __tablename__ = "governance_changes"
    id: Mapped[int] = mapped_column(primary_key=True)
    app_id: Mapped[int] = mapped_column(ForeignKey("apps.id", ondelete="CASCADE"), index=True)
    who: Mapped[str] = mapped_column(String(63))
    at: Mapped[datetime] = mapped_column()
    port: Mapped[int] = mapped_column(Integer)
    old: Mapped[int] = mapped_column(BigInteger)
    new: Mapped[int] = mapped_column(BigInteger)


class MetricBucket(Base):
    """Counters of one node in one time bucket (10 s for an hour, 1 min for a day)."""

    __tablename__ = "metric_buckets"
    node_id: Mapped[int] = mapped_column(
        ForeignKey("nodes.id", ondelete="CASCADE"), primary_key=True
    )
    res: Mapped[int] = mapped_column(Integer, primary_key=True)
    t: Mapped[int] = mapped_column(BigInteger, primary_key=True, index=True)
    req_in: Mapped[int] = mapped_column(BigInteger, default=0)
    err_in: Mapped[int] = mapped_column(BigInteger, default=0)
    rt_in: Mapped[float] = mapped_column(Float, default=0.0)
    req_out: Mapped[int] = mapped_column(BigInteger, default=0)
    err_out: Mapped[int] = mapped_column(BigInteger, default=0)
    rt_out: Mapped[float] = mapped_column(Float, default=0.0)
    bytes_in: Mapped[int] = mapped_column(BigInteger, default=0)
    bytes_out: Mapped[int] = mapped_column(BigInteger, default=0)
    # Node gauges are summed with `samples` so a bucket's average is sum / samples.
    samples: Mapped[int] = mapped_column(Integer, default=0)
    cpu_sum: Mapped[float] = mapped_column(Float, default=0.0)
    mem_sum: Mapped[float] = mapped_column(Float, default=0.0)
    load1_sum: Mapped[float] = mapped_column(Float, default=0.0)
    net_in: Mapped[int] = mapped_column(BigInteger, default=0)
    net_out: Mapped[int] = mapped_column(BigInteger, default=0)


class SidecarSnapshot(Base):
    """Sidecar counts per status of one instance at one time (R-OB-2), taken every 10 s."""

    __tablename__ = "sidecar_snapshots"
    instance_id: Mapped[int] = mapped_column(
        ForeignKey("instances.id", ondelete="CASCADE"), primary_key=True
    )
    res: Mapped[int] = mapped_column(Integer, primary_key=True)
    t: Mapped[int] = mapped_column(BigInteger, primary_key=True, index=True)
    running: Mapped[int] = mapped_column(Integer)
    terminated: Mapped[int] = mapped_column(Integer)
    waiting: Mapped[int] = mapped_column(Integer)
    unknown: Mapped[int] = mapped_column(Integer)
    healthy: Mapped[int] = mapped_column(Integer)
