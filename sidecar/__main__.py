"""`python -m sidecar --config FILE [--hot-restart]`: the sidecar process itself.

Kept free of the CLI's imports (click, the agent, the interception engine) so the
long-running process holds only what proxying needs; `sofamesh sidecar run` execs this.
"""

from __future__ import annotations

import argparse
import sys

from sidecar.errors import SidecarConfigError, SidecarError

EXIT_BAD_INPUT = 2  # the sofamesh CLI's code for bad input (agent/exit_codes.py)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sidecar", description=__doc__)
    parser.add_argument("--config", required=True, help="sidecar config file (YAML or JSON)")
    parser.add_argument("--hot-restart", action="store_true", help="take over a running sidecar")
    args = parser.parse_args(argv)
    from sidecar.app import run  # noqa: PLC0415

    try:
        return run(args.config, hot_restart=args.hot_restart)
    except SidecarConfigError as exc:
        print(f"sofamesh: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except SidecarError as exc:
        print(f"sofamesh: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
