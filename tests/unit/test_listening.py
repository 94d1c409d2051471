"""Reading listening ports from /proc/net/tcp{,6} (the no-blackhole check before apply)."""

from __future__ import annotations

from pathlib import Path

import pytest

from hijack.listening import listening_ports

pytestmark = pytest.mark.unit

HEADER = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid\n"


def test_only_listening_sockets_count(tmp_path: Path) -> None:
    (tmp_path / "tcp").write_text(
        HEADER
        + "   0: 00000000:3A9E 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1337\n"
        + "   1: 0100007F:1F90 0100007F:D2F0 01 00000000:00000000 00:00000000 00000000     0\n"
    )
    (tmp_path / "tcp6").write_text(
        HEADER
        + "   0: 00000000000000000000000000000000:3A99 00000000000000000000000000000000:0000 0A"
        " 00000000:00000000 00:00000000 00000000  1337\n"
    )
    assert listening_ports(tmp_path) == {15006, 15001}


def test_missing_files_mean_no_listeners(tmp_path: Path) -> None:
    assert listening_ports(tmp_path / "absent") == set()
