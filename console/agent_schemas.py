"""Request bodies the agents send (signed): register, status, metrics."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AwareDatetime, Field, StrictBool, StrictFloat, StrictInt, StrictStr

from console.schemas import AppName, Body, NodeIP, Port

# R-AG-5 (seed) sidecar status values.
SidecarStatus = Literal["Running", "Terminated", "Waiting", "Unknown"]
SIDECAR_STATUSES: tuple[SidecarStatus, ...] = ("Running", "Terminated", "Waiting", "Unknown")
Backend = Literal["iptables", "nftables", "ebpf", "none"]
Hostname = Annotated[StrictStr, Field(min_length=1, max_length=255, pattern=r"^[A-Za-z0-9_.-]+$")]
Counter = Annotated[StrictInt, Field(ge=0, le=2**53)]
Number = Annotated[StrictInt | StrictFloat, Field(ge=0, le=2**53)]
Percent = Annotated[StrictInt | StrictFloat, Field(ge=0, le=100)]
MAX_PORT_ROWS = 256


class NodeRef(Body):
    app: AppName
    ip: NodeIP


class RegisterRequest(NodeRef):
    hostname: Hostname


class StatusReport(NodeRef):
    hostname: Hostname
    sidecar_status: SidecarStatus
    healthy: StrictBool
    version: Annotated[StrictStr, Field(max_length=64, pattern=r"^[ -~]*$")]
    created_at: AwareDatetime | None = None
    backend: Backend
    rule_digest: Annotated[StrictStr, Field(max_length=128, pattern=r"^[A-Za-z0-9:_-]*$")] = ""
    ipv6: StrictBool = False


class NodeGauges(Body):
    cpu_percent: Percent = 0
    mem_percent: Percent = 0
    net_in_bytes: Counter = 0
    net_out_bytes: Counter = 0
    load1: Annotated[Number, Field(le=1_000_000)] = 0


class PortCounters(Body):
    """Counters of one app port and direction since the previous post."""

    direction: Literal["inbound", "outbound"]
    port: Port
    requests: Counter = 0
    errors: Counter = 0
    rt_ms_sum: Number = 0
    bytes_in: Counter = 0
    bytes_out: Counter = 0


class MetricsReport(NodeRef):
    at: AwareDatetime
    node: NodeGauges = NodeGauges()
    ports: Annotated[list[PortCounters], Field(max_length=MAX_PORT_ROWS)] = Field(
        default_factory=list
    )
