"""The console's config for this node, turned into what the node should run: the
interception config, the sidecar's config document, and their digests (reconcile's
Desired).

Local facts win over the console where only the node can know them: the proxy user's name
(install's --proxy-user) and the sidecar's state directory. Everything the console sends
is validated by the same parsers as a config file, so a bad value is refused with its
field named and the node keeps what it runs (R-SF-2).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from agent.errors import BadInput
from agent.paths import Paths
from hijack import engine
from hijack.backends.base import Backend
from hijack.config import HijackConfig
from hijack.errors import ConfigError
from sidecar.config import SidecarConfig
from sidecar.errors import SidecarConfigError


@dataclass(frozen=True)
class NodeDesired:
    version: int
    enabled: bool
    hijack: HijackConfig
    sidecar: SidecarConfig
    rules_digest: str

    @property
    def sidecar_digest(self) -> str:
        return self.sidecar.digest


def from_console(
    doc: dict[str, Any], paths: Paths, proxy_user: str, backend: Backend
) -> NodeDesired:
    """doc: the console's config answer as cached ({version, hijack_enabled, hijack, limits})."""
    try:
        hijack_doc = copy.deepcopy(doc["hijack"])
        hijack_doc.setdefault("proxy", {})["user"] = proxy_user
        hijack = HijackConfig.parse(hijack_doc, source="console config")
        sidecar = SidecarConfig.parse(
            {
                "inbound": {"port": hijack.inbound_redirect_port},
                "outbound": {"port": hijack.outbound_redirect_port},
                "admin": {"port": hijack.proxy_admin_port},
                "limits": {str(port): limit for port, limit in doc["limits"].items()},
                "state_dir": str(paths.sidecar_state_dir),
            }
        )
        plan = engine.plan(hijack)
        return NodeDesired(
            version=int(doc["version"]),
            enabled=bool(doc["hijack_enabled"]),
            hijack=hijack,
            sidecar=sidecar,
            rules_digest=backend.expected_view(plan).digest,
        )
    except ConfigError as exc:
        raise BadInput(f"console config: {exc.field}", exc.message) from None
    except SidecarConfigError as exc:
        raise BadInput(f"console config: sidecar.{exc.field}", exc.message) from None
    except (KeyError, TypeError, ValueError) as exc:
        raise BadInput("console config", f"malformed: {exc}") from None
