"""Hold SIGINT and SIGTERM back while a lab tears down, then deliver them."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType

from netlab.errors import LabTerminated

_DEFERRED = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Run the block without being interrupted by SIGINT/SIGTERM.

    A Ctrl-C in the middle of deleting namespaces would leave half a lab behind. Signals
    that arrive meanwhile are delivered afterwards to the handler that was in place
    (its default action becomes an exception, so outer cleanups still run).
    Outside the main thread Python cannot set handlers, so there it does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []

    def remember(signum: int, frame: FrameType | None) -> None:
        received.append(signum)

    previous = {sig: signal.signal(sig, remember) for sig in _DEFERRED}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        for sig in dict.fromkeys(received):
            _deliver(signal.Signals(sig), previous[signal.Signals(sig)])


def _deliver(sig: signal.Signals, handler: object) -> None:
    if handler is signal.SIG_IGN:
        return
    if callable(handler):
        handler(sig, None)
    elif sig is signal.SIGINT:
        raise KeyboardInterrupt
    else:
        raise LabTerminated(f"{sig.name} received during lab teardown")
