"""HTTP/1 framing: message boundaries found without changing a byte (R-SC-2)."""

from __future__ import annotations

import pytest

from sidecar.http1 import Event, Framer, looks_like_http

pytestmark = pytest.mark.unit


def run(framer: Framer, *chunks: bytes) -> list[Event]:
    events: list[Event] = []
    for chunk in chunks:
        events += framer.feed(chunk)
    return events


def kinds(events: list[Event]) -> list[str]:
    return [k for k, _, _ in events]


def rejoined(events: list[Event]) -> bytes:
    return b"".join(chunk for kind, _, chunk in events if kind in ("head", "body"))


def test_sniffing_decides_from_the_first_bytes() -> None:
    assert looks_like_http(b"GET / HTTP/1.1\r\n") is True
    assert looks_like_http(b"PROPFIND ") is True
    assert looks_like_http(b"GE") is None
    assert looks_like_http(b"*1\r\n$4\r\nPING\r\n") is False  # redis
    assert looks_like_http(b"\x00\x00\x00\x08\x04\xd2\x16\x2f") is False  # postgres
    assert looks_like_http(b"HELLO world") is False


def test_pipelined_requests_are_split_exactly_even_across_chunk_boundaries() -> None:
    stream = (
        b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n"
        b"POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
        b"GET /c HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    for cut in range(1, len(stream)):
        framer = Framer(response=False)
        events = run(framer, stream[:cut], stream[cut:])
        assert kinds(events).count("head") == 3
        assert kinds(events).count("end") == 3
        assert rejoined(events) == stream
        heads = [h for k, h, _ in events if k == "head"]
        assert [h.method for h in heads if h] == [b"GET", b"POST", b"GET"]


def test_chunked_body_with_extensions_and_trailers() -> None:
    stream = (
        b"POST /u HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n"
        b"GET /next HTTP/1.1\r\n\r\n"
    )
    for cut in (1, 10, 60, 70, 80, len(stream) - 3):
        events = run(Framer(response=False), stream[:cut], stream[cut:])
        assert kinds(events).count("end") == 2
        assert rejoined(events) == stream


def test_response_framing_follows_the_request_method_and_status() -> None:
    methods = iter([b"HEAD", b"GET", b"GET", b"GET"])
    framer = Framer(response=True, next_method=lambda: next(methods))
    stream = (
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n"  # answer to HEAD: no body
        b"HTTP/1.1 100 Continue\r\n\r\n"
        b"HTTP/1.1 204 No Content\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc"
    )
    events = framer.feed(stream)
    assert kinds(events) == ["head", "end", "head", "interim", "head", "end", "head", "body", "end"]
    assert rejoined(events) == stream


def test_close_delimited_response_ends_at_eof() -> None:
    framer = Framer(response=True)
    events = framer.feed(b"HTTP/1.0 200 OK\r\n\r\nsome body")
    assert kinds(events) == ["head", "body"]
    assert kinds(framer.eof()) == ["end"]


def test_upgrade_request_holds_what_follows_until_answered() -> None:
    framer = Framer(response=False)
    head = b"GET /ws HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
    events = framer.feed(head + b"\x81\x85frame")
    assert kinds(events) == ["head", "end", "held"]
    assert events[2][2] == b"\x81\x85frame"
    framer.resume()
    assert kinds(framer.feed(b"GET / HTTP/1.1\r\n\r\n")) == ["head", "end"]


def test_unframable_bytes_are_returned_untouched() -> None:
    framer = Framer(response=False)
    bad = b"GET / HTTP/1.1\r\nContent-Length: nope\r\n\r\nrest"
    events = framer.feed(bad)
    assert events == [("error", None, bad)]


def test_a_large_body_is_passed_through_without_copies() -> None:
    framer = Framer(response=False)
    framer.feed(b"PUT /big HTTP/1.1\r\nContent-Length: 3000000\r\n\r\n")
    block = bytes(1_000_000)
    for _ in range(3):
        events = framer.feed(block)
        assert events[0][2] is block  # the same object: forwarded as is
    assert kinds(framer.feed(b"")) == []
