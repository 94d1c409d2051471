"""Shared test set-up: root-only tests are skipped with a reason, never silently dropped."""

from __future__ import annotations

import os
import shutil

import pytest

ROOT_MARKERS = ("netns", "ebpf", "e2e")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    missing = [tool for tool in ("ip", "nsenter") if shutil.which(tool) is None]
    for item in items:
        if not any(item.get_closest_marker(m) for m in ROOT_MARKERS):
            continue
        if os.geteuid() != 0:
            item.add_marker(pytest.mark.skip(reason="needs root to build network-namespace VMs"))
        elif missing:
            item.add_marker(
                pytest.mark.skip(reason=f"needs {', '.join(missing)} (iproute2, util-linux)")
            )
