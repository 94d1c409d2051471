"""Administrative operations: users, tenants, workspaces, instances and access keys.

Used by `sofamesh console admin ...` and by the key endpoints of the API. Each function
validates its input, writes in the caller's session and raises ConsoleError subclasses.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from console import security, values
from console.errors import BadInput, Conflict, NotFound
from console.models import AccessKey, Instance, Tenant, User, Workspace
from console.state import now

# R-CO-1 (seed): a user holds at most two keys, so a leaked one can be replaced first.
MAX_KEYS_PER_USER = 2
MIN_PASSWORD = 8


@dataclass(frozen=True)
class CreatedKey:
    key_id: str
    secret: str
    tenant: str
    workspace: str
    instance_id: str


@dataclass(frozen=True)
class KeyInfo:
    key_id: str
    user: str
    tenant: str
    workspace: str
    instance_id: str
    created_at: datetime


def _name(value: str, field: str) -> str:
    try:
        return values.scope_name(value)
    except ValueError as exc:
        raise BadInput(str(exc), [field]) from None


def create_user(db: Session, name: str, password: str) -> User:
    _name(name, "name")
    if len(password) < MIN_PASSWORD:
        raise BadInput(f"at least {MIN_PASSWORD} characters", ["password"])
    if db.execute(select(User).where(User.name == name)).scalar() is not None:
        raise Conflict(f"user {name!r} exists", ["name"])
    user = User(name=name, password_hash=security.hash_password(password), created_at=now())
    db.add(user)
    db.flush()
    return user


def set_password(db: Session, name: str, password: str) -> None:
    if len(password) < MIN_PASSWORD:
        raise BadInput(f"at least {MIN_PASSWORD} characters", ["password"])
    user = find_user(db, name)
    user.password_hash = security.hash_password(password)


def find_user(db: Session, name: str) -> User:
    user = db.execute(select(User).where(User.name == name)).scalar()
    if user is None:
        raise NotFound(f"no user {name!r}", ["user"])
    return user


def create_tenant(db: Session, name: str) -> Tenant:
    _name(name, "tenant")
    if db.execute(select(Tenant).where(Tenant.name == name)).scalar() is not None:
        raise Conflict(f"tenant {name!r} exists", ["tenant"])
    tenant = Tenant(name=name)
    db.add(tenant)
    db.flush()
    return tenant


def find_tenant(db: Session, name: str) -> Tenant:
    tenant = db.execute(select(Tenant).where(Tenant.name == name)).scalar()
    if tenant is None:
        raise NotFound(f"no tenant {name!r}", ["tenant"])
    return tenant


def create_workspace(db: Session, tenant: str, name: str) -> Workspace:
    _name(name, "workspace")
    owner = find_tenant(db, tenant)
    exists = select(Workspace).where(Workspace.tenant_id == owner.id, Workspace.name == name)
    if db.execute(exists).scalar() is not None:
        raise Conflict(f"workspace {name!r} exists in tenant {tenant!r}", ["workspace"])
    workspace = Workspace(tenant_id=owner.id, name=name)
    db.add(workspace)
    db.flush()
    return workspace


def find_workspace(db: Session, tenant: str, name: str) -> Workspace:
    owner = find_tenant(db, tenant)
    found = db.execute(
        select(Workspace).where(Workspace.tenant_id == owner.id, Workspace.name == name)
    ).scalar()
    if found is None:
        raise NotFound(f"no workspace {name!r} in tenant {tenant!r}", ["workspace"])
    return found


def create_instance(db: Session, tenant: str, workspace: str, instance_id: str) -> Instance:
    _name(instance_id, "instance_id")
    owner = find_workspace(db, tenant, workspace)
    exists = select(Instance).where(
        Instance.workspace_id == owner.id, Instance.instance_id == instance_id
    )
    if db.execute(exists).scalar() is not None:
        raise Conflict(f"instance {instance_id!r} exists", ["instance_id"])
    instance = Instance(workspace_id=owner.id, instance_id=instance_id)
    db.add(instance)
    db.flush()
    return instance


def find_instance(db: Session, tenant: str, workspace: str, instance_id: str) -> Instance:
    owner = find_workspace(db, tenant, workspace)
    found = db.execute(
        select(Instance).where(
            Instance.workspace_id == owner.id, Instance.instance_id == instance_id
        )
    ).scalar()
    if found is None:
        raise NotFound(f"no instance {instance_id!r} in {tenant}/{workspace}", ["instance_id"])
    return found


def create_key(db: Session, user: User, instance: Instance) -> CreatedKey:
    """A new key for `user` scoped to `instance`; the only time the secret leaves the DB."""
    count = db.execute(
        select(func.count()).select_from(AccessKey).where(AccessKey.user_id == user.id)
    ).scalar_one()
    if count >= MAX_KEYS_PER_USER:
        raise Conflict(
            f"user {user.name!r} already holds {MAX_KEYS_PER_USER} keys: delete one first",
            ["user"],
        )
    key = AccessKey(
        key_id=security.new_key_id(),
        secret=security.new_secret(),
        user_id=user.id,
        instance_id=instance.id,
        created_at=now(),
    )
    db.add(key)
    db.flush()
    workspace = instance.workspace
    return CreatedKey(
        key.key_id, key.secret, workspace.tenant.name, workspace.name, instance.instance_id
    )


def delete_key(db: Session, key_id: str, user: User | None = None) -> None:
    """Delete a key (only `user`'s own when given); agents using it are refused at once."""
    query = select(AccessKey).where(AccessKey.key_id == key_id)
    if user is not None:
        query = query.where(AccessKey.user_id == user.id)
    key = db.execute(query).scalar()
    if key is None:
        raise NotFound(f"no key {key_id!r}", ["key_id"])
    db.delete(key)


def list_keys(db: Session, user: User | None = None) -> list[KeyInfo]:
    query = select(AccessKey).order_by(AccessKey.created_at, AccessKey.key_id)
    if user is not None:
        query = query.where(AccessKey.user_id == user.id)
    result = []
    for key in db.execute(query).scalars():
        workspace = key.instance.workspace
        result.append(
            KeyInfo(
                key.key_id,
                key.user.name,
                workspace.tenant.name,
                workspace.name,
                key.instance.instance_id,
                key.created_at,
            )
        )
    return result
