"""Hold SIGINT and SIGTERM back while a lab tears down, then deliver them."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

from netlab.errors import LabTerminated

Handler = Callable[[int, FrameType | None], Any] | int | signal.Handlers | None
"""What signal.signal() returns: None when the handler was not set from Python."""

_DEFERRED = (signal.SIGINT, signal.SIGTERM)


def restore(sig: signal.Signals, handler: Handler) -> None:
    signal.signal(sig, handler if handler is not None else signal.SIG_DFL)


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
            restore(sig, handler)
        for signum in dict.fromkeys(received):
            _deliver(signal.Signals(signum), previous[signal.Signals(signum)])


def _deliver(sig: signal.Signals, handler: Handler) -> None:
    if handler is signal.SIG_IGN:
        return
    if callable(handler):
        handler(sig, None)
    elif sig is signal.SIGINT:
        raise KeyboardInterrupt
    else:
        raise LabTerminated(f"{sig.name} received during lab teardown")
