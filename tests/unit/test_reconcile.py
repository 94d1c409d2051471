"""The reconcile decision for every situation the node can be in (R-AG-1..4, R-AG-6)."""

from __future__ import annotations

import dataclasses

import pytest

from agent.reconcile import Action, Desired, Observed, decide

pytestmark = pytest.mark.unit

ON = Desired(enabled=True, rules_digest="rules-1", sidecar_digest="sidecar-1")
OFF = dataclasses.replace(ON, enabled=False)
FRESH = Observed(
    sidecar_running=False,
    sidecar_healthy=False,
    sidecar_failed=False,
    sidecar_digest=None,
    written_sidecar_digest=None,
    rules_digest=None,
    parked=False,
)
SERVING = Observed(
    sidecar_running=True,
    sidecar_healthy=True,
    sidecar_failed=False,
    sidecar_digest="sidecar-1",
    written_sidecar_digest="sidecar-1",
    rules_digest="rules-1",
    parked=False,
)


def seen(base: Observed = SERVING, **changes: object) -> Observed:
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def test_install_writes_config_and_starts_the_sidecar_before_any_rule() -> None:
    assert decide(ON, FRESH) == [Action.WRITE_SIDECAR_CONFIG, Action.START_SIDECAR]


def test_rules_wait_until_the_sidecar_is_healthy() -> None:
    starting = seen(FRESH, sidecar_running=True, written_sidecar_digest="sidecar-1")
    assert decide(ON, starting) == []
    healthy = seen(starting, sidecar_healthy=True, sidecar_digest="sidecar-1")
    assert decide(ON, healthy) == [Action.APPLY_RULES]


def test_in_sync_means_nothing_to_do() -> None:
    assert decide(ON, SERVING) == []


def test_a_parameter_change_reapplies_the_rules_only() -> None:
    desired = dataclasses.replace(ON, rules_digest="rules-2")
    assert decide(desired, SERVING) == [Action.APPLY_RULES]


def test_drift_is_repaired_by_applying_again() -> None:
    assert decide(ON, seen(rules_digest="someone-flushed")) == [Action.APPLY_RULES]


def test_a_governance_change_reloads_the_sidecar_without_restarting_it() -> None:
    desired = dataclasses.replace(ON, sidecar_digest="sidecar-2")
    assert decide(desired, SERVING) == [Action.WRITE_SIDECAR_CONFIG, Action.RELOAD_SIDECAR]
    written = seen(written_sidecar_digest="sidecar-2")
    assert decide(desired, written) == [Action.RELOAD_SIDECAR]


def test_an_unhealthy_sidecar_fails_open_at_once() -> None:
    assert decide(ON, seen(sidecar_healthy=False)) == [Action.REMOVE_RULES]


def test_a_crash_loop_fails_open_and_waits_for_the_supervisor() -> None:
    looping = seen(sidecar_running=False, sidecar_failed=True, sidecar_healthy=False)
    assert decide(ON, looping) == [Action.REMOVE_RULES]
    assert decide(ON, seen(looping, rules_digest=None)) == []


def test_healthy_again_reapplies_the_rules() -> None:
    recovered = seen(rules_digest=None)
    assert decide(ON, recovered) == [Action.APPLY_RULES]


def test_rules_left_without_a_sidecar_are_removed_before_it_starts_again() -> None:
    # e.g. after a reboot restored rules but not the sidecar, or the sidecar was killed
    orphaned = seen(FRESH, rules_digest="rules-1", written_sidecar_digest="sidecar-1")
    assert decide(ON, orphaned) == [Action.REMOVE_RULES, Action.START_SIDECAR]


def test_switch_off_parks_drains_then_removes() -> None:
    assert decide(OFF, SERVING) == [
        Action.PARK_RULES,
        Action.STOP_SIDECAR,
        Action.FINISH_REMOVAL,
    ]


def test_switch_off_with_an_unhealthy_sidecar_removes_at_once() -> None:
    assert decide(OFF, seen(sidecar_healthy=False)) == [
        Action.REMOVE_RULES,
        Action.STOP_SIDECAR,
    ]


def test_switch_off_finishes_an_interrupted_turn_off() -> None:
    parked = seen(rules_digest=None, parked=True)
    assert decide(OFF, parked) == [Action.STOP_SIDECAR, Action.FINISH_REMOVAL]
    stopped = seen(parked, sidecar_running=False)
    assert decide(OFF, stopped) == [Action.FINISH_REMOVAL]
    assert decide(OFF, FRESH) == []


def test_switch_on_after_off_starts_again() -> None:
    assert decide(ON, seen(FRESH, written_sidecar_digest="sidecar-1")) == [Action.START_SIDECAR]
