"""Request bodies of the operator API: pydantic models that validate every field (R-SF-2).

A bad field answers 422 with `{"detail": [{"loc": ["body", "ports", 0], "msg": ...}]}`.
Numbers and booleans are strict: "8080" is not a port and 1 is not `true`.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    StrictBool,
    StrictInt,
    StrictStr,
    WithJsonSchema,
)

from console import values

Port = Annotated[StrictInt, Field(ge=values.PORT_MIN, le=values.PORT_MAX)]
# Validators give the messages; WithJsonSchema puts the same rules in the OpenAPI document.
AppName = Annotated[
    StrictStr,
    AfterValidator(values.app_name),
    WithJsonSchema({"type": "string", "pattern": values.APP_NAME_RE.pattern}),
]
ScopeName = Annotated[
    StrictStr,
    AfterValidator(values.scope_name),
    WithJsonSchema({"type": "string", "pattern": values.SCOPE_NAME_RE.pattern}),
]
NodeIP = Annotated[
    StrictStr,
    Field(max_length=64),
    AfterValidator(values.node_ip),
    WithJsonSchema(
        {"type": "string", "anyOf": [{"format": "ipv4"}, {"format": "ipv6"}], "maxLength": 64}
    ),
]
# 8080 or "8000-8100": one validator for both, so an error names the item, not a branch.
PortRange = Annotated[
    str,
    PlainValidator(values.port_range_input),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "integer", "minimum": values.EXCLUDABLE_MIN, "maximum": values.PORT_MAX},
                {"type": "string", "maxLength": 11, "pattern": r"^[0-9]+([-:][0-9]+)?$"},
            ]
        }
    ),
]
Cidr = Annotated[StrictStr, Field(max_length=64), AfterValidator(values.cidr)]
MaxRequests = Annotated[StrictInt, Field(ge=0, le=values.MAX_REQUESTS_MAX)]
PortKey = Annotated[StrictStr, Field(pattern=r"^[0-9]{1,5}$")]

MAX_APP_PORTS = 64
MAX_NODES_PER_REQUEST = 1000
MAX_EXCLUDED_PORTS = 1024
# R-HJ-7: blacklists of 10,000 CIDRs are a supported size.
MAX_EXCLUDED_CIDRS = 10_000


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LoginRequest(Body):
    username: Annotated[StrictStr, Field(pattern=values.SCOPE_NAME_RE.pattern)]
    password: Annotated[StrictStr, Field(min_length=1, max_length=1024)]


class ScopeRequest(Body):
    tenant: ScopeName
    workspace: ScopeName
    instance_id: ScopeName


class AppCreate(Body):
    name: AppName
    ports: Annotated[
        list[Port],
        Field(min_length=1, max_length=MAX_APP_PORTS),
        AfterValidator(lambda v: [int(p) for p in values.unique([str(p) for p in v], "port")]),
    ]
    nodes: Annotated[
        list[NodeIP],
        Field(min_length=1, max_length=MAX_NODES_PER_REQUEST),
        AfterValidator(lambda v: values.unique(v, "node")),
    ]


class NodeCreate(Body):
    ip: NodeIP


class HijackSwitch(Body):
    enabled: StrictBool


class HijackBatch(Body):
    ips: Annotated[
        list[NodeIP],
        Field(min_length=1, max_length=MAX_NODES_PER_REQUEST),
        AfterValidator(lambda v: values.unique(v, "node")),
    ]
    enabled: StrictBool


class Params(Body):
    """Per-app interception parameters; each list replaces the stored one."""

    inbound_exclude_ports: Annotated[
        list[PortRange],
        Field(max_length=MAX_EXCLUDED_PORTS),
        AfterValidator(lambda v: values.unique(v, "port range")),
    ] = []
    outbound_exclude_cidrs: Annotated[
        list[Cidr],
        Field(max_length=MAX_EXCLUDED_CIDRS),
        AfterValidator(lambda v: values.unique(v, "CIDR")),
    ] = []
    outbound_exclude_ports: Annotated[
        list[PortRange],
        Field(max_length=MAX_EXCLUDED_PORTS),
        AfterValidator(lambda v: values.unique(v, "port range")),
    ] = []


class Governance(Body):
    """Max requests in flight per app port (0 = unlimited). Ports left out become 0."""

    limits: Annotated[dict[PortKey, MaxRequests], Field(max_length=MAX_APP_PORTS)]
