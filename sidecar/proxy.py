"""The data path: one accepted (downstream) connection and its upstream connection.

asyncio Protocols rather than streams: every byte goes from data_received straight to the
other transport's write, with flow control by pause_reading/resume_reading. HTTP/1 is
metered through the framer (http1.py) without changing a byte; anything else is a pipe.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import struct
import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

from sidecar.http1 import Framer, Head, looks_like_http
from sidecar.origdst import original_destination
from sidecar.stats import PortStats

if TYPE_CHECKING:
    from sidecar.worker import Worker

log = logging.getLogger("sofamesh.sidecar")

PENDING_HIGH = 256 * 1024  # downstream bytes buffered while the upstream connects
SNIFF_GRACE = 0.5  # seconds to wait for a first byte once the upstream failed


@dataclass(slots=True)
class Request:
    method: bytes
    start: float
    gated: bool
    upgrade: bool
    status: int = 0
    local: bytes = b""  # a response the sidecar makes itself (503), sent in order


class Upstream(asyncio.Protocol):
    __slots__ = ("down", "transport")

    def __init__(self, down: Downstream | _Closed) -> None:
        self.down = down
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses

    def data_received(self, data: bytes) -> None:
        self.down.from_upstream(data)

    def eof_received(self) -> bool:
        self.down.upstream_eof()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.down.upstream_lost(exc)

    def pause_writing(self) -> None:
        if self.down.transport is not None:
            self.down.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.down.transport is not None and not self.down.closed:
            self.down.transport.resume_reading()


class Downstream(asyncio.Protocol):
    """One intercepted connection, from accept to close."""

    def __init__(self, worker: Worker, direction: str) -> None:
        self.worker = worker
        self.direction = direction
        self.transport: asyncio.Transport | None = None
        self.up: Upstream | None = None
        self.mode = ""  # "" while sniffing, then "http" or "tcp"
        self.closed = False
        self.pending: list[bytes] = []
        self.pending_size = 0
        self.sniffed = b""
        self.upstream_failed: str | None = None
        self.requests: deque[Request] = deque()  # in order: forwarded and local
        self.awaiting: deque[Request] = deque()  # forwarded, response not complete
        self.req = Framer(response=False)
        self.resp = Framer(response=True, next_method=self._next_method)
        self.discarding = False  # dropping the body of a refused request
        self.held: list[bytes] | None = None  # bytes after an upgrade request, until its answer
        self.close_after_response = False
        self.last_active = time.monotonic()
        self.stats = PortStats(direction, 0)  # replaced once the destination is known
        self.dst: tuple[str, int] = ("", 0)
        self._out_down: list[bytes] | None = None
        self._out_up: list[bytes] | None = None

    # -- downstream side -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport = cast(asyncio.Transport, transport)
        sock: socket.socket = transport.get_extra_info("socket")
        dst = original_destination(sock, self.worker.config.original_dst)  # type: ignore[arg-type]
        if dst is None or self.worker.is_own_listener(dst):
            # Not redirected here (or redirected to ourselves): there is nowhere to forward.
            transport.abort()
            self.closed = True
            return
        self.dst = dst
        self.stats = self.worker.stats.port(self.direction, dst[1])
        self.stats.active_connections += 1
        self.worker.connections.add(self)
        self.worker.loop.create_task(self._connect())

    def data_received(self, data: bytes) -> None:
        self.last_active = time.monotonic()
        self.stats.bytes_received += len(data)
        mode = self.mode
        if mode == "http":
            self._request_bytes(data)
        elif mode == "tcp":
            self._to_upstream(data)
        else:
            self._sniff(data)

    def eof_received(self) -> bool:
        if (
            self.up is not None
            and self.up.transport is not None
            and self.up.transport.can_write_eof()
        ):
            self.up.transport.write_eof()
            return True  # keep reading responses on the half-closed connection
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None and self.requests:
            self.stats.errors["downstream_reset"] += 1
        self._finish()

    def pause_writing(self) -> None:
        if self.up is not None and self.up.transport is not None:
            self.up.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.up is not None and self.up.transport is not None:
            self.up.transport.resume_reading()

    # -- upstream connection ---------------------------------------------------------------

    async def _connect(self) -> None:
        host, port = self.dst
        config = self.worker.config
        local = None
        if self.direction == "inbound":
            # The rules pass the sidecar's connection to the app only from this source;
            # connecting without it would be intercepted again and loop back to us.
            source = config.inbound_source6 if ":" in host else config.inbound_source
            if source:
                local = (source, 0)
        try:
            # asyncio.timeout, not wait_for: no extra task per connection.
            async with asyncio.timeout(config.timeouts.connect):
                _, up = await self.worker.loop.create_connection(
                    lambda: Upstream(self), host, port, local_addr=local
                )
        except (OSError, TimeoutError) as exc:
            if local is not None and getattr(exc, "errno", None) == errno.EADDRNOTAVAIL:
                why = f"source {local[0]} is not on this host (is this family intercepted?)"
                exc = OSError(exc.errno, why)
                log.error("inbound to %s:%s: %s", host, port, exc.strerror)
            self._upstream_unreachable(exc)
            return
        if self.closed:
            if up.transport is not None:
                up.transport.close()
            return
        self.up = up
        assert up.transport is not None
        for chunk in self.pending:
            up.transport.write(chunk)
        self.pending.clear()
        self.pending_size = 0
        if self.transport is not None:
            self.transport.resume_reading()

    def _upstream_unreachable(self, exc: BaseException) -> None:
        reason = (
            "timed out"
            if isinstance(exc, TimeoutError)
            else (getattr(exc, "strerror", None) or str(exc))
        )
        self.stats.errors["upstream_connect"] += 1
        log.debug("upstream %s:%s unreachable: %s", *self.dst, reason)
        self.upstream_failed = reason
        if self.mode == "http" or (not self.mode and looks_like_http(self.sniffed)):
            self._reply_bad_gateway()
        elif self.mode == "tcp" or self.sniffed:
            self._reset()
        else:
            self.worker.loop.call_later(SNIFF_GRACE, self._give_up_sniffing)

    def _give_up_sniffing(self) -> None:
        if not self.closed and not self.mode:
            self._reset()

    def _reply_bad_gateway(self) -> None:
        body = f"sofamesh: upstream connect failed: {self.upstream_failed}\n".encode()
        response = (
            b"HTTP/1.1 502 Bad Gateway\r\ncontent-type: text/plain\r\n"
            b"x-sofamesh-error: upstream-connect\r\nconnection: close\r\n"
            b"content-length: %d\r\n\r\n%s" % (len(body), body)
        )
        self.mode = "http"
        if not self.requests:
            self.stats.requests += 1
        self.stats.observe(502, 0.0)
        self._write_down(response)
        self._close()

    # -- sniffing and TCP ------------------------------------------------------------------

    def _sniff(self, data: bytes) -> None:
        self.sniffed += data
        verdict = looks_like_http(self.sniffed)
        if verdict is None:
            return
        data, self.sniffed = self.sniffed, b""
        if verdict:
            self.mode = "http"
            self.stats.connections["http"] += 1
            if self.upstream_failed is not None:
                self._reply_bad_gateway()
                return
            self._request_bytes(data)
        else:
            self._become_tcp()
            if self.upstream_failed is not None:
                self._reset()
                return
            self._to_upstream(data)

    def _become_tcp(self) -> None:
        self.mode = "tcp"
        self.stats.connections["tcp"] += 1

    def _to_upstream(self, data: bytes) -> None:
        up = self.up
        if up is not None and up.transport is not None:
            out = self._out_up
            if out is None:
                up.transport.write(data)
            else:
                out.append(data)
            return
        self.pending.append(data)
        self.pending_size += len(data)
        if self.pending_size > PENDING_HIGH and self.transport is not None:
            self.transport.pause_reading()

    def _write_down(self, data: bytes) -> None:
        if self.transport is not None and not self.closed:
            self.stats.bytes_sent += len(data)
            out = self._out_down
            if out is None:
                self.transport.write(data)
            else:
                out.append(data)

    def _flush_down(self, out: list[bytes]) -> None:
        """One write (one syscall) for everything one upstream read produced."""
        self._out_down = None
        if out and self.transport is not None and not self.closed:
            self.transport.write(out[0] if len(out) == 1 else b"".join(out))

    # -- HTTP requests (downstream -> upstream) --------------------------------------------

    def _request_bytes(self, data: bytes) -> None:
        out: list[bytes] = []
        self._out_up = out
        try:
            self._request_events(data)
        finally:
            self._out_up = None
            up = self.up
            if out and up is not None and up.transport is not None:
                up.transport.write(out[0] if len(out) == 1 else b"".join(out))

    def _request_events(self, data: bytes) -> None:
        for kind, head, chunk in self.req.feed(data):
            if kind == "body":
                if not self.discarding:
                    self._to_upstream(chunk)
            elif kind == "head":
                assert head is not None
                self._request_head(head, chunk)
            elif kind == "end":
                self.discarding = False
            elif kind == "held":
                self.held = [*(self.held or []), chunk]
            elif kind == "error":
                self.stats.errors["bad_request"] += 1
                self._fall_back_to_pipe(chunk)
                return

    def _request_head(self, head: Head, raw: bytes) -> None:
        now = time.monotonic()
        stats = self.stats
        stats.requests += 1
        port = self.dst[1]
        limit, acquired = self.worker.gate.try_acquire(port)
        if limit and not acquired:
            stats.limit_rejections += 1
            self.discarding = True
            body = f"sofamesh: max requests ({limit}) reached for port {port}\n".encode()
            close = head.expects_continue or not head.keep_alive
            response = (
                b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\n"
                b"x-sofamesh-limit: %d\r\n%scontent-length: %d\r\n\r\n%s"
                % (limit, b"connection: close\r\n" if close else b"", len(body), body)
            )
            rejected = Request(
                head.method, now, gated=False, upgrade=False, status=503, local=response
            )
            self.requests.append(rejected)
            if close:
                self.close_after_response = True
            self._flush_local()
            return
        upgrade = head.upgrade or head.method == b"CONNECT"
        request = Request(head.method, now, gated=acquired, upgrade=upgrade)
        stats.active_requests += 1
        self.requests.append(request)
        self.awaiting.append(request)
        self._to_upstream(raw)

    def _next_method(self) -> bytes:
        return self.awaiting[0].method if self.awaiting else b""

    # -- HTTP responses (upstream -> downstream) -------------------------------------------

    def from_upstream(self, data: bytes) -> None:
        self.last_active = time.monotonic()
        mode = self.mode
        if mode == "tcp":
            self._write_down(data)
            return
        if not mode:
            # The server spoke first: not HTTP (SSH, SMTP, MySQL...): a pipe.
            self._become_tcp()
            if self.sniffed:
                self._to_upstream(self.sniffed)
                self.sniffed = b""
            self._write_down(data)
            return
        out: list[bytes] = []
        self._out_down = out
        try:
            self._response_events(data)
        finally:
            self._flush_down(out)

    def _response_events(self, data: bytes) -> None:
        for kind, head, chunk in self.resp.feed(data):
            if kind == "body":
                self._write_down(chunk)
            elif kind == "head":
                assert head is not None
                self._response_head(head, chunk)
            elif kind == "end":
                self._response_end()
            elif kind == "error":
                self.stats.errors["upstream_reset"] += 1
                self._fall_back_to_pipe(b"", downstream_bytes=chunk)
                return
            # "interim" (100 Continue and friends): already forwarded with its head

    def _response_head(self, head: Head, raw: bytes) -> None:
        if self.awaiting:
            self.awaiting[0].status = head.status
        if head.status >= 200 and (self.worker.draining or self.close_after_response):
            raw = _with_connection_close(raw)
            self.close_after_response = True
        self._write_down(raw)

    def _response_end(self) -> None:
        if not self.awaiting:
            return
        request = self.awaiting.popleft()
        if self.requests and self.requests[0] is request:
            self.requests.popleft()
        self._complete(request)
        if request.upgrade and (
            request.status == 101 or (request.method == b"CONNECT" and request.status < 300)
        ):
            held, self.held = self.held or [], None
            self._switch_to_pipe(held)
            return
        if request.upgrade:
            held, self.held = self.held or [], None
            self.req.resume()
            for chunk in held:
                self._request_bytes(chunk)
        self._flush_local()
        if self.close_after_response and not self.requests:
            self._close()

    def _complete(self, request: Request) -> None:
        stats = self.stats
        stats.active_requests -= 1
        stats.observe(request.status or 502, time.monotonic() - request.start)
        if request.gated:
            self.worker.gate.release(self.dst[1])
        self.worker.access(self, request)

    def _flush_local(self) -> None:
        """Send, in order, the responses the sidecar made itself once nothing is ahead."""
        while self.requests and self.requests[0].local:
            request = self.requests.popleft()
            self.stats.observe(request.status, time.monotonic() - request.start)
            self._write_down(request.local)
            self.worker.access(self, request)
        if self.close_after_response and not self.requests:
            self._close()

    def upstream_eof(self) -> None:
        for kind, _, _ in self.resp.eof():
            if kind == "end":
                self._response_end()
        if self.awaiting:
            self.stats.errors["upstream_reset"] += 1
        if self.transport is not None and not self.closed:
            if self.mode == "tcp" and self.transport.can_write_eof():
                self.transport.write_eof()
            else:
                self._close()

    def upstream_lost(self, exc: Exception | None) -> None:
        if exc is not None and self.awaiting:
            self.stats.errors["upstream_reset"] += 1
        self._close()

    # -- switching, closing ----------------------------------------------------------------

    def _switch_to_pipe(self, held: list[bytes]) -> None:
        """After 101 Switching Protocols (or CONNECT): bytes flow untouched both ways."""
        self.mode = "tcp"
        for chunk in held:
            self._to_upstream(chunk)

    def _fall_back_to_pipe(self, upstream_bytes: bytes, downstream_bytes: bytes = b"") -> None:
        """Not HTTP we can frame: stop metering, never break the stream."""
        for request in self.awaiting:
            self.stats.active_requests -= 1
            if request.gated:
                self.worker.gate.release(self.dst[1])
        self.awaiting.clear()
        self.requests.clear()
        self.mode = "tcp"
        if upstream_bytes:
            self._to_upstream(upstream_bytes)
        if downstream_bytes:
            self._write_down(downstream_bytes)

    def idle_close(self) -> None:
        """Close a keep-alive connection with nothing in flight (idle timeout, drain)."""
        if not self.requests and self.req.idle and self.held is None:
            self._close()

    def waiting_for_head(self) -> bool:
        """Part of a request head (or of the first bytes) arrived, the rest did not."""
        return bool(self.sniffed) or (self.mode == "http" and bool(self.req.buffer))

    def busy(self) -> bool:
        return bool(self.requests) or not self.req.idle

    def _reset(self) -> None:
        if self.transport is not None and not self.closed:
            sock = self.transport.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.transport.abort()
        self._finish()

    def _close(self) -> None:
        out = self._out_down
        if out and self.transport is not None and not self.closed:
            # Bytes this read already produced go out before the close.
            self.transport.write(b"".join(out))
            out.clear()
        if self.transport is not None and not self.closed:
            self.transport.close()
        if self.up is not None and self.up.transport is not None:
            self.up.transport.close()
        self._finish()

    def _finish(self) -> None:
        if self.closed:
            return
        self.closed = True
        for request in self.awaiting:
            self.stats.active_requests -= 1
            if request.gated:
                self.worker.gate.release(self.dst[1])
        self.awaiting.clear()
        self.requests.clear()
        self.stats.active_connections -= 1
        self.worker.forget(self)
        up = self.up
        if up is not None:
            if up.transport is not None:
                up.transport.close()
            # Break the Downstream <-> Upstream cycle so reference counting frees both at
            # once: the collector then has next to nothing to do (fewer latency spikes).
            self.up = None
            up.down = _CLOSED


class _Closed:
    """What an Upstream points at once its Downstream is gone: late events are dropped."""

    transport = None
    closed = True

    def from_upstream(self, data: bytes) -> None:
        pass

    def upstream_eof(self) -> None:
        pass

    def upstream_lost(self, exc: Exception | None) -> None:
        pass


_CLOSED = _Closed()


def _with_connection_close(raw: bytes) -> bytes:
    """The same head, asking the client to close after this response (drain)."""
    lines = raw[:-4].split(b"\r\n")
    kept = [lines[0], *(line for line in lines[1:] if not line.lower().startswith(b"connection:"))]
    return b"\r\n".join([*kept, b"connection: close"]) + b"\r\n\r\n"
