"""One reconcile function for install, uninstall, switch on/off, parameter changes, boot,
drift repair and fail-open (DESIGN.md §2): compare what should be with what is, and name
the smallest safe next steps. Pure: the daemon observes, calls decide(), and carries out
the actions in order, then observes again.

Safety rules it encodes (R-AG-1..4, R-SF-1):
- rules only while the sidecar is healthy (never blackhole);
- an unhealthy or crash-looping sidecar: rules removed at once (fail open);
- turning off: park the rules (new connections go direct, redirected ones keep working),
  drain the sidecar, then remove the parked rule;
- a governance change reloads the sidecar in place; a parameter change re-applies the
  rules in one transaction; neither restarts anything.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Action(enum.Enum):
    WRITE_SIDECAR_CONFIG = "write the sidecar config"
    START_SIDECAR = "start the sidecar"
    RELOAD_SIDECAR = "reload the sidecar (limits)"
    APPLY_RULES = "apply the interception rules"
    REMOVE_RULES = "remove the rules (fail open)"
    PARK_RULES = "park the rules (new connections direct)"
    STOP_SIDECAR = "drain and stop the sidecar"
    FINISH_REMOVAL = "remove the parked rule"


@dataclass(frozen=True)
class Desired:
    enabled: bool  # the node's hijack switch in the console
    rules_digest: str  # digest of the rules the current parameters plan
    sidecar_digest: str  # digest of the sidecar config the current limits give


@dataclass(frozen=True)
class Observed:
    sidecar_running: bool  # supervisor: STARTING or RUNNING
    sidecar_healthy: bool  # health probe verdict (debounced)
    sidecar_failed: bool  # supervisor BACKOFF or FATAL: a crash loop
    sidecar_digest: str | None  # config digest the running sidecar reports (GET /config)
    written_sidecar_digest: str | None  # digest of the config file on disk
    rules_digest: str | None  # installed rules' digest, None when none are installed
    parked: bool  # only the parked rule is installed


def decide(desired: Desired, seen: Observed) -> list[Action]:
    if not desired.enabled:
        return _turn_off(seen)
    actions: list[Action] = []
    if seen.written_sidecar_digest != desired.sidecar_digest:
        actions.append(Action.WRITE_SIDECAR_CONFIG)
    if seen.sidecar_failed or (seen.sidecar_running and not seen.sidecar_healthy):
        # Fail open first: traffic must not wait on a sidecar that is not serving.
        if seen.rules_digest is not None or seen.parked:
            actions.append(Action.REMOVE_RULES)
        if not seen.sidecar_running and not seen.sidecar_failed:
            actions.append(Action.START_SIDECAR)
        return actions
    if not seen.sidecar_running:
        if seen.rules_digest is not None or seen.parked:
            actions.append(Action.REMOVE_RULES)  # rules without a sidecar: never
        actions.append(Action.START_SIDECAR)
        return actions
    if seen.sidecar_digest != desired.sidecar_digest:
        actions.append(Action.RELOAD_SIDECAR)
    if seen.rules_digest != desired.rules_digest or seen.parked:
        actions.append(Action.APPLY_RULES)  # also repairs drift; one transaction
    return actions


def _turn_off(seen: Observed) -> list[Action]:
    if seen.rules_digest is not None:
        if seen.sidecar_running and seen.sidecar_healthy:
            return [Action.PARK_RULES, Action.STOP_SIDECAR, Action.FINISH_REMOVAL]
        return [Action.REMOVE_RULES, *([Action.STOP_SIDECAR] if seen.sidecar_running else [])]
    if seen.sidecar_running:
        return [Action.STOP_SIDECAR, *([Action.FINISH_REMOVAL] if seen.parked else [])]
    return [Action.FINISH_REMOVAL] if seen.parked else []
