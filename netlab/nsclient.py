"""An HTTP client whose sockets live in a namespace VM: the test process talks to the
console VM the way an operator's browser on that network would, without any route from
the machine's own namespace into the lab.

setns(2) with CLONE_NEWNET changes the network namespace of the calling thread only, so
one worker thread enters the VM's namespace once and every request runs on it.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import httpx

CLONE_NEWNET = 0x40000000
T = TypeVar("T")


def _enter(netns_path: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(netns_path, os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns {netns_path}: {os.strerror(err)}")
    finally:
        os.close(fd)


class InNetns:
    """Run callables on a thread that sits in the given network namespace."""

    def __init__(self, netns_path: str) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, initializer=_enter, initargs=(netns_path,))

    def __call__(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return self._pool.submit(fn, *args, **kwargs).result()

    def close(self) -> None:
        self._pool.shutdown(wait=True)


class NetnsClient:
    """httpx.Client whose connections are made from inside a VM."""

    def __init__(self, netns_path: str, base_url: str, timeout: float = 30.0) -> None:
        self._ns = InNetns(netns_path)
        self.http = self._ns(httpx.Client, base_url=base_url, timeout=timeout)

    def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        return self._ns(self.http.request, method, url, **kwargs)

    def get(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("GET", url, **kwargs)

    def post(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("POST", url, **kwargs)

    def put(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("PUT", url, **kwargs)

    def delete(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("DELETE", url, **kwargs)

    def close(self) -> None:
        self._ns(self.http.close)
        self._ns.close()
