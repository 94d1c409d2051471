"""A node's desired config: its version, bumps on change, and the document agents fetch.

The `hijack` part has exactly the keys and canonical form of `HijackConfig.to_document()`
in hijack/config.py (the API tests parse it with that class and compare), built here
without importing hijack/: the console only speaks JSON to agents.
"""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from console import values
from console.models import App, GovernanceLimit, Node
from console.views import NodeConfig, SidecarConfig

# Defaults of hijack/config.py; the console manages only the exclusion lists.
INBOUND_REDIRECT_PORT = 15006
OUTBOUND_REDIRECT_PORT = 15001
PROXY_USER = "sofamesh-proxy"
PROXY_ADMIN_PORT = 15000
SSH_PORTS = (22,)
EMPTY_PARAMS: dict[str, list[str]] = {
    "inbound_exclude_ports": [],
    "outbound_exclude_cidrs": [],
    "outbound_exclude_ports": [],
}


def initial_version() -> int:
    """Milliseconds since the epoch: a re-created node never repeats an old version."""
    return int(time.time() * 1000)


def bump_nodes(db: Session, node_ids: list[int]) -> list[int]:
    for start in range(0, len(node_ids), 500):
        chunk = node_ids[start : start + 500]
        db.execute(
            update(Node)
            .where(Node.id.in_(chunk))
            .values(config_version=Node.config_version + 1)
            .execution_options(synchronize_session=False)
        )
    return node_ids


def bump_app(db: Session, app_id: int) -> list[int]:
    """Bump every node of the app; returns their ids (to notify)."""
    ids = list(db.execute(select(Node.id).where(Node.app_id == app_id)).scalars())
    return bump_nodes(db, ids)


def limits_of(db: Session, app: App) -> dict[str, int]:
    """Every app port with its max requests (0 = unlimited), keyed by the port as text."""
    stored = {
        row.port: row.max_requests
        for row in db.execute(
            select(GovernanceLimit).where(GovernanceLimit.app_id == app.id)
        ).scalars()
    }
    return {str(port): stored.get(port, 0) for port in sorted(app.ports)}


def params_of(app: App) -> dict[str, list[str]]:
    return {key: list(app.params.get(key, [])) for key in EMPTY_PARAMS}


def hijack_document(params: dict[str, list[str]], console: str | None) -> dict[str, Any]:
    return {
        "inbound": {
            "exclude_ports": values.merge_ranges(params["inbound_exclude_ports"]),
            "redirect_port": INBOUND_REDIRECT_PORT,
        },
        "outbound": {
            "exclude_cidrs": values.collapse_cidrs(params["outbound_exclude_cidrs"]),
            "exclude_ports": values.merge_ranges(params["outbound_exclude_ports"]),
            "redirect_port": OUTBOUND_REDIRECT_PORT,
        },
        "proxy": {"user": PROXY_USER, "admin_port": PROXY_ADMIN_PORT, "ports": []},
        # The address this agent reached the console at: never intercepted (R-HJ-3).
        "console": [console] if console else [],
        "ssh_ports": list(SSH_PORTS),
        "ipv6": "auto",
    }


def node_config(db: Session, node: Node, console: str | None) -> NodeConfig:
    app = node.app
    return NodeConfig(
        version=node.config_version,
        hijack_enabled=node.hijack_enabled,
        hijack=hijack_document(params_of(app), console),
        sidecar=SidecarConfig(limits=limits_of(db, app)),
    )
