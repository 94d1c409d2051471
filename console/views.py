"""Response bodies (they make the OpenAPI description precise)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel


class ScopeOut(BaseModel):
    tenant: str
    workspace: str
    instance_id: str


class SessionOut(BaseModel):
    user: str
    csrf_token: str
    scope: ScopeOut | None


class KeyOut(ScopeOut):
    key_id: str
    created_at: datetime


class KeyCreated(KeyOut):
    """The only answer that ever carries the secret."""

    secret: str


class NodeOut(BaseModel):
    ip: str
    hijack_enabled: bool
    config_version: int
    registered: bool
    hostname: str | None


class AppOut(BaseModel):
    name: str
    ports: list[int]
    nodes: list[NodeOut]
    created_at: datetime


class ParamsOut(BaseModel):
    inbound_exclude_ports: list[str]
    outbound_exclude_cidrs: list[str]
    outbound_exclude_ports: list[str]


class GovernanceOut(BaseModel):
    limits: dict[str, int]


class GovernanceChangeOut(BaseModel):
    who: str
    at: datetime
    port: int
    old: int
    new: int


class EnvironmentOut(ScopeOut):
    app: str
    ip: str | None
    access_key_id: str | None
    install_command: str


class SidecarOut(BaseModel):
    sidecar_name: str
    version: str | None
    app: str
    node_name: str | None
    node_ip: str
    node_status: str
    sidecar_status: str
    healthy: bool
    created_at: datetime | None
    backend: str | None
    rule_digest: str | None
    ipv6: bool | None
    updated_at: datetime | None


class StatusPoint(BaseModel):
    t: int
    Running: int
    Terminated: int
    Waiting: int
    Unknown: int
    healthy: int


class VersionCount(BaseModel):
    version: str
    count: int


class SidecarMonitoring(BaseModel):
    series: list[StatusPoint]
    versions: list[VersionCount]


class AppTraffic(BaseModel):
    app: str
    replicas: int
    bytes_in: int
    bytes_out: int
    requests_per_min: float
    rt_ms: float
    error_rate: float
    updated_at: datetime | None


class RealtimeMonitoring(BaseModel):
    top_requests: list[AppTraffic]
    top_rt: list[AppTraffic]
    top_error_rate: list[AppTraffic]
    apps: list[AppTraffic]


class WhoAmIOut(BaseModel):
    key_id: str
    tenant: str
    workspace: str
    instance_id: str


class RegisterOut(BaseModel):
    node_id: int
    config_version: int


class SidecarConfig(BaseModel):
    limits: dict[str, int]


class NodeConfig(BaseModel):
    version: int
    hijack_enabled: bool
    # The HijackConfig document of hijack/config.py (`to_document()` form).
    hijack: dict[str, Any]
    sidecar: SidecarConfig


class Health(BaseModel):
    status: str
    database: str
    # Agents long-polling this process right now.
    long_polls: int


class TrafficPoint(BaseModel):
    """One bucket of an app's traffic (inbound requests: what the app served)."""

    t: int
    requests: int
    errors: int
    rt_ms: float
    bytes_in: int
    bytes_out: int


class NodeMetrics(BaseModel):
    """One node over the window: gauges averaged, counters summed (R-OB-1)."""

    ip: str
    hostname: str | None
    cpu_percent: float
    mem_percent: float
    load1: float
    net_in_bytes: int
    net_out_bytes: int
    requests_per_min: float
    rt_ms: float
    error_rate: float
    updated_at: datetime | None


class AppMonitoring(BaseModel):
    app: str
    resolution: int
    series: list[TrafficPoint]
    nodes: list[NodeMetrics]
