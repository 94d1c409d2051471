"""Exit codes of the sofamesh CLI: documented, distinct, mapped only in the CLI (R-CLI-5)."""

from __future__ import annotations

from enum import IntEnum


class ExitStatus(IntEnum):
    OK = 0
    ERROR = 1  # anything not listed below
    BAD_INPUT = 2  # a flag, config file or console-sent value is invalid; nothing changed
    NOT_ROOT = 3  # the command changes or reads kernel state and needs root
    CONSOLE = 4  # console unreachable or authentication failed
    BACKEND_UNSUPPORTED = 5  # no interception backend can run on this host
    ROLLED_BACK = 6  # applying failed and the previous state was restored
    CONFLICT = 7  # installed sofamesh objects disagree (e.g. legacy and nft mixed)
    DRIFT = 8  # `status --check`: installed rules differ from the desired ones
    SIDECAR_DOWN = 9  # nothing listens where the rules would redirect: refused (no blackhole)
    NOT_REGISTERED = 10  # the console knows no such tenant/workspace/instance, app or node
    BUSY = 11  # another install/uninstall holds the node's lock (waited, gave up)
    NOT_INSTALLED = 12  # the command needs `sofamesh install` first
