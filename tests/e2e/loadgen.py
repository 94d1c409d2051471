"""Steady HTTP load from inside a VM until a stop file appears (standard library only).

    python -P loadgen.py HOST PORT PATH --stop FILE --out FILE [--concurrency N]

Each worker sends GET requests, each on a new connection (so every request meets the
interception rules as they are at that moment), and counts answers by status and failures
by kind. The summary goes to --out as JSON when the stop file appears.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import threading
import time
from collections import Counter


def worker(
    *, host: str, port: int, path: str, stop: str, counts: Counter[str], lock: threading.Lock
) -> None:
    while not os.path.exists(stop):
        conn = http.client.HTTPConnection(host, port, timeout=10)
        try:
            conn.request("GET", path)
            answer = conn.getresponse()
            answer.read()
            key = f"status {answer.status}"
        except (OSError, http.client.HTTPException) as exc:
            key = f"error {type(exc).__name__}: {exc}"
        finally:
            conn.close()
        with lock:
            counts[key] += 1
        time.sleep(0.01)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("path")
    parser.add_argument("--stop", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--concurrency", type=int, default=2)
    args = parser.parse_args()
    counts: Counter[str] = Counter()
    lock = threading.Lock()
    threads = [
        threading.Thread(
            target=worker,
            kwargs={
                "host": args.host,
                "port": args.port,
                "path": args.path,
                "stop": args.stop,
                "counts": counts,
                "lock": lock,
            },
        )
        for _ in range(args.concurrency)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ok = sum(n for k, n in counts.items() if k == "status 200")
    with open(args.out + ".tmp", "w") as handle:
        json.dump({"ok": ok, "failed": sum(counts.values()) - ok, "counts": dict(counts)}, handle)
    os.replace(args.out + ".tmp", args.out)


if __name__ == "__main__":
    main()
