"""HTTP/1.x message framing over a byte stream, without changing a byte.

The proxy forwards bytes as they arrive; the framer only says where each message's head,
body and end are, so the proxy can meter requests, hold one back (governance) and notice an
upgrade. Heads are parsed by httptools (llhttp, C); body framing (Content-Length, chunked,
close-delimited) is tracked here, chunk by chunk, never byte by byte.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import httptools

MAX_HEAD = 64 * 1024
# Tokens that start an HTTP/1 request line; anything else is treated as raw TCP.
METHODS = frozenset(
    b"GET HEAD POST PUT DELETE OPTIONS PATCH CONNECT TRACE PROPFIND PROPPATCH MKCOL COPY MOVE "
    b"LOCK UNLOCK REPORT SEARCH PURGE LINK UNLINK".split()
)
MAX_METHOD = max(map(len, METHODS))


class FramingError(Exception):
    """The stream is not (or no longer) HTTP/1 that we can frame."""

    def __init__(self, message: str, unconsumed: bytes = b"") -> None:
        super().__init__(message)
        self.unconsumed = unconsumed


def looks_like_http(prefix: bytes) -> bool | None:
    """True/False once decidable from the first bytes, None if more bytes are needed."""
    space = prefix.find(b" ", 0, MAX_METHOD + 1)
    if space > 0:
        return prefix[:space] in METHODS
    if len(prefix) > MAX_METHOD or not prefix.isalpha() or not prefix.isupper():
        return False
    return None


@dataclass
class Head:
    """What the proxy needs from a message head."""

    raw: bytes
    method: bytes = b""
    status: int = 0
    headers: dict[bytes, bytes] = field(default_factory=dict)
    keep_alive: bool = True

    @property
    def upgrade(self) -> bool:
        return (
            b"upgrade" in self.headers.get(b"connection", b"").lower()
            and b"upgrade" in self.headers
        )

    @property
    def expects_continue(self) -> bool:
        return self.headers.get(b"expect", b"").lower() == b"100-continue"


class _HeadCollector:
    """httptools callback target: collects headers (lower-cased names)."""

    def __init__(self) -> None:
        self.headers: dict[bytes, bytes] = {}

    def on_header(self, name: bytes, value: bytes) -> None:
        key = name.lower()
        if key in self.headers:  # repeated header: join as the RFC allows
            self.headers[key] += b", " + value
        else:
            self.headers[key] = value


def parse_head(raw: bytes, *, response: bool) -> Head:
    collector = _HeadCollector()
    parser: httptools.HttpRequestParser | httptools.HttpResponseParser
    parser = (
        httptools.HttpResponseParser(collector)
        if response
        else httptools.HttpRequestParser(collector)
    )
    try:
        parser.feed_data(raw)
    except httptools.HttpParserUpgrade:
        pass  # the head is complete; what follows belongs to the new protocol
    except httptools.HttpParserError as exc:
        raise FramingError(f"bad HTTP head: {exc}") from None
    head = Head(raw=raw, headers=collector.headers, keep_alive=parser.should_keep_alive())
    if response:
        head.status = parser.get_status_code()  # type: ignore[union-attr]
    else:
        head.method = parser.get_method()  # type: ignore[union-attr]
    return head


# Framer events, in stream order:
#   ("head", Head, raw head bytes)  ("body", None, bytes)
#   ("interim", None, b"")  a 1xx other than 101 ended; the request still waits
#   ("end", None, b"")      the message ended
#   ("error", None, bytes)  not framable from here on: these bytes were not framed
#   ("held", None, bytes)   after an Upgrade/CONNECT request: bytes whose meaning depends on
#                           the answer (101: another protocol; otherwise the next request)
Event = tuple[str, Head | None, bytes]

(_HEAD, _LENGTH, _CHUNK_SIZE, _CHUNK_DATA, _CHUNK_CRLF, _TRAILERS, _UNTIL_CLOSE, _PAUSED) = range(8)


class Framer:
    """Splits one direction of a connection into messages.

    For responses, `body_rule` must be set (by the proxy) before the head is fed: it tells
    whether the request was HEAD (no body) or CONNECT.
    """

    def __init__(self, *, response: bool, next_method: Callable[[], bytes] | None = None) -> None:
        self.response = response
        self.state = _HEAD
        self.buffer = b""
        self.remaining = 0
        # For responses: the method of the request the next response answers (HEAD, CONNECT).
        self.next_method = next_method or (lambda: b"")
        self.request_method = b""

    @property
    def idle(self) -> bool:
        return self.state == _HEAD and not self.buffer

    def resume(self) -> None:
        """Continue framing after an upgrade request was answered without switching."""
        if self.state == _PAUSED:
            self.state = _HEAD

    def feed(self, data: bytes) -> list[Event]:
        events: list[Event] = []
        try:
            self._feed(data, events)
        except FramingError as exc:
            self.state, self.buffer = _HEAD, b""
            events.append(("error", None, exc.unconsumed))
        return events

    def _feed(self, data: bytes, events: list[Event]) -> None:
        view = data
        while view:
            state = self.state
            if state == _HEAD:
                view = self._head(view, events)
            elif state == _LENGTH:
                n = min(self.remaining, len(view))
                events.append(("body", None, view if n == len(view) else view[:n]))
                view = view[n:]
                self.remaining -= n
                if self.remaining == 0:
                    self._end(events)
            elif state == _UNTIL_CLOSE:
                events.append(("body", None, view))
                view = b""
            elif state == _PAUSED:
                events.append(("held", None, view))
                view = b""
            elif state == _CHUNK_DATA:
                n = min(self.remaining, len(view))
                events.append(("body", None, view if n == len(view) else view[:n]))
                view = view[n:]
                self.remaining -= n
                if self.remaining == 0:
                    self.state = _CHUNK_CRLF
                    self.remaining = 2
            elif state == _CHUNK_CRLF:
                n = min(self.remaining, len(view))
                events.append(("body", None, view[:n]))
                view = view[n:]
                self.remaining -= n
                if self.remaining == 0:
                    self.state = _CHUNK_SIZE
            else:  # _CHUNK_SIZE or _TRAILERS: line-oriented, small
                view = self._line(view, events)

    def eof(self) -> list[Event]:
        """The peer closed: a close-delimited body ends here."""
        if self.state == _UNTIL_CLOSE:
            self.state = _HEAD
            return [("end", None, b"")]
        return []

    def _head(self, view: bytes, events: list[Event]) -> bytes:
        buf = self.buffer + view if self.buffer else view
        # Tolerate the empty lines some clients send between pipelined requests.
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            if len(buf) > MAX_HEAD:
                raise FramingError("message head larger than 64 KiB", bytes(buf))
            self.buffer = bytes(buf)
            return b""
        raw, rest = bytes(buf[: end + 4]), buf[end + 4 :]
        self.buffer = b""
        tail: list[Event] = []
        try:
            head = parse_head(raw, response=self.response)
            if self.response:
                self.request_method = self.next_method()
            self._body_after(head, tail)
        except FramingError as exc:
            raise FramingError(str(exc), bytes(buf)) from None
        events.append(("head", head, raw))
        events.extend(tail)
        return rest

    def _body_after(self, head: Head, events: list[Event]) -> None:
        h = head.headers
        if self.response:
            status = head.status
            if 100 <= status < 200:
                self._end(events, interim=status != 101)
                return
            if status in (204, 304) or self.request_method == b"HEAD":
                self._end(events)
                return
            if self.request_method == b"CONNECT" and 200 <= status < 300:
                self._end(events)
                return
        elif head.method == b"CONNECT" or (
            head.upgrade and b"content-length" not in h and b"transfer-encoding" not in h
        ):
            self._end(events)
            self.state = _PAUSED
            return
        if b"transfer-encoding" in h:
            if h[b"transfer-encoding"].lower().rstrip().endswith(b"chunked"):
                self.state = _CHUNK_SIZE
                return
            if not self.response:
                raise FramingError("request with a non-chunked transfer-encoding")
            self.state = _UNTIL_CLOSE
            return
        if b"content-length" in h:
            try:
                length = int(h[b"content-length"].split(b",")[0])
            except ValueError:
                raise FramingError("bad content-length") from None
            if length < 0:
                raise FramingError("negative content-length")
            if length == 0:
                self._end(events)
            else:
                self.state, self.remaining = _LENGTH, length
            return
        if self.response:
            self.state = _UNTIL_CLOSE
        else:
            self._end(events)

    def _line(self, view: bytes, events: list[Event]) -> bytes:
        buf = self.buffer + view if self.buffer else view
        nl = buf.find(b"\r\n")
        if nl < 0:
            if len(buf) > MAX_HEAD:
                raise FramingError("chunk line too long", bytes(buf))
            self.buffer = bytes(buf)
            return b""
        line, rest = bytes(buf[: nl + 2]), buf[nl + 2 :]
        self.buffer = b""
        events.append(("body", None, line))
        if self.state == _CHUNK_SIZE:
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise FramingError("bad chunk size", bytes(buf)) from None
            if size == 0:
                self.state = _TRAILERS
            else:
                self.state, self.remaining = _CHUNK_DATA, size
        elif line == b"\r\n":  # end of trailers
            self._end(events)
        return rest

    def _end(self, events: list[Event], *, interim: bool = False) -> None:
        self.state = _HEAD
        events.append(("interim" if interim else "end", None, b""))
