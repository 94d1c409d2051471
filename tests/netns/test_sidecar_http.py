"""HTTP/1.1 through the sidecar is what the app would have answered directly, byte for byte
(R-SC-1, R-SC-2): small, large (streamed), chunked, pipelined, keep-alive, 100-continue,
WebSocket upgrade, outbound, and a 502 when the app is not there.

"Direct" is the same request made from inside node to 127.0.0.1, which is never intercepted.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.netns.sidecar_env import (
    APP_PORT,
    CLOSED_PORT,
    ECHO_PORT,
    SMALL_SIZE,
    WS_PORT,
    SidecarLab,
    sidecar_lab,
)
from tests.netns.sidecar_wire import sha256_file, split_responses, without_date

pytestmark = pytest.mark.netns

MAX_SIDECAR_RSS = 50 * 1024 * 1024


@pytest.fixture(scope="module")
def env() -> Iterator[SidecarLab]:
    with sidecar_lab({}, big=True) as the_env:
        yield the_env


def get(path: str, *, close: bool = False, extra: str = "") -> bytes:
    last = "Connection: close\r\n" if close else ""
    return f"GET {path} HTTP/1.1\r\nHost: app\r\n{extra}{last}\r\n".encode()


def echoed(upload: Path, *, chunked: bool) -> dict[str, object]:
    """What the echo app answers when it received exactly the bytes of `upload`."""
    return {"length": upload.stat().st_size, "sha256": sha256_file(upload), "chunked": chunked}


def via_sidecar_and_direct(env: SidecarLab, request: bytes, family: int = 4) -> tuple[bytes, bytes]:
    """The raw answer to `request` from client through the sidecar, and from node directly."""
    before = env.sidecar.counters("inbound", APP_PORT)
    sent, proxied = env.raw(env.client, env.host(env.node, family), APP_PORT, request)
    assert sent["outcome"] == "eof", sent
    count = len(split_responses(proxied))
    env.sidecar.delta_after("inbound", APP_PORT, before, {"requests_total": count})
    direct_host = "::1" if family == 6 else "127.0.0.1"
    _, direct = env.raw(env.node, direct_host, APP_PORT, request)
    return without_date(proxied), without_date(direct)


def test_a_large_response_is_streamed_intact_without_buffering_it(env: SidecarLab) -> None:
    """First in the module, so that no earlier test's peak memory counts."""
    big = env.files["big.bin"]
    assert isinstance(big, Path)
    out = env.root / "big.download"
    before = env.sidecar.counters("inbound", APP_PORT)
    env.sidecar.reset_peak_rss()  # earlier tests' peaks are not this one's
    done = env.curl(env.client, "-o", str(out), "-w", "%{http_code}", env.url(APP_PORT, "/big.bin"))
    assert done.stdout == "200"
    assert out.stat().st_size == big.stat().st_size
    assert sha256_file(out) == sha256_file(big)
    out.unlink()
    delta = env.sidecar.delta_after("inbound", APP_PORT, before, {"responses.2xx": 1})
    assert delta["bytes_sent"] > big.stat().st_size  # body plus head, through the sidecar
    peak = env.sidecar.peak_rss_bytes()
    assert 0 < peak < MAX_SIDECAR_RSS, f"sidecar peak RSS {peak} bytes for a 50 MB body"


@pytest.mark.parametrize("family", [4, 6])
def test_a_small_response_is_byte_identical_to_the_direct_one(env: SidecarLab, family: int) -> None:
    proxied, direct = via_sidecar_and_direct(env, get("/small.bin", close=True), family)
    assert proxied == direct
    [(status, _, body)] = split_responses(proxied)
    assert (status, body) == (200, env.files["small.bin"])
    assert len(body) == SMALL_SIZE


def test_a_chunked_response_is_byte_identical(env: SidecarLab) -> None:
    request = get("/gz/text.txt", close=True, extra="Accept-Encoding: gzip\r\n")
    proxied, direct = via_sidecar_and_direct(env, request)
    [(status, headers, _)] = split_responses(direct)
    assert (status, headers["transfer-encoding"]) == (200, "chunked")  # the case under test
    assert proxied == direct


def test_a_chunked_request_body_reaches_the_app_intact(env: SidecarLab) -> None:
    upload = env.root / "chunked.upload"
    upload.write_bytes(hashlib.sha256(b"seed").digest() * 20000)
    before = env.sidecar.counters("inbound", ECHO_PORT)
    done = env.curl(
        env.client,
        "-H",
        "Transfer-Encoding: chunked",
        "--data-binary",
        f"@{upload}",
        env.url(ECHO_PORT, "/upload"),
    )
    assert json.loads(done.stdout) == echoed(upload, chunked=True)
    delta = env.sidecar.delta_after("inbound", ECHO_PORT, before, {"responses.2xx": 1})
    assert delta["bytes_received"] > upload.stat().st_size  # the body went through the sidecar


def test_pipelined_requests_are_answered_in_order_and_byte_identical(env: SidecarLab) -> None:
    request = get("/small.bin") + get("/missing") + get("/one.txt", close=True)
    proxied, direct = via_sidecar_and_direct(env, request)
    assert [status for status, _, _ in split_responses(proxied)] == [200, 404, 200]
    assert proxied == direct


def test_keep_alive_serves_several_requests_on_one_connection(env: SidecarLab) -> None:
    before = env.sidecar.counters("inbound", APP_PORT)
    urls = [env.url(APP_PORT, p) for p in ("/one.txt", "/missing", "/one.txt")]
    done = env.curl(env.client, "-v", *urls)
    assert done.stderr.count("Re-using existing connection") == 2, done.stderr
    assert done.stdout.startswith("one\n") and done.stdout.endswith("one\n")
    delta = env.sidecar.delta_after("inbound", APP_PORT, before, {"requests_total": 3})
    assert (delta["requests_total"], delta["connections_total"]) == (3, 1)


def test_expect_100_continue_upload_works(env: SidecarLab) -> None:
    upload = env.root / "expect.upload"
    upload.write_bytes(hashlib.sha256(b"expect").digest() * 65536)  # 2 MB
    before = env.sidecar.counters("inbound", ECHO_PORT)
    done = env.curl(
        env.client,
        "-v",
        "-H",
        "Expect: 100-continue",
        "--expect100-timeout",
        "20",  # without the 100 curl would send the body anyway, after this long
        "--data-binary",
        f"@{upload}",
        env.url(ECHO_PORT, "/upload"),
    )
    assert "< HTTP/1.1 100 Continue" in done.stderr
    assert json.loads(done.stdout) == echoed(upload, chunked=False)
    delta = env.sidecar.delta_after("inbound", ECHO_PORT, before, {"responses.2xx": 1})
    assert (delta["requests_total"], delta["responses.2xx"]) == (1, 1)
    assert delta["bytes_received"] > upload.stat().st_size


def test_websocket_upgrade_then_frames_echo_through(env: SidecarLab) -> None:
    before = env.sidecar.counters("inbound", WS_PORT)
    got = env.run_app(
        env.client, "ws", env.node.ipv4, str(WS_PORT), "--message", "hello", "--message", "wörld"
    )
    assert got == {
        "status": 101,
        "accept_ok": True,
        "echoes": [[1, "hello"], [1, "wörld"]],
        "binary_echo_ok": True,  # a 70,000-byte frame: 64-bit length, several reads
        "close": [8, 1000],
    }
    delta = env.sidecar.delta_after("inbound", WS_PORT, before, {"responses.1xx": 1})
    assert (delta["connections_total"], delta["protocol_connections.http"]) == (1, 1)


def test_the_app_sees_connections_from_the_inbound_source(env: SidecarLab) -> None:
    done = env.curl(env.client, env.url(ECHO_PORT, "/peer"))
    assert done.stdout.strip() == '{"peer": "127.0.0.6"}'


@pytest.mark.parametrize("family", [4, 6])
def test_outbound_http_goes_through_the_sidecar_to_the_peer(env: SidecarLab, family: int) -> None:
    before = env.sidecar.counters("outbound", APP_PORT)
    url = env.url(APP_PORT, "/one.txt", vm=env.peer, family=family)
    assert env.curl(env.node, url).stdout == "one\n"
    delta = env.sidecar.delta_after("outbound", APP_PORT, before, {"requests_total": 1})
    assert (delta["requests_total"], delta["responses.2xx"]) == (1, 1)


def test_http_to_a_port_without_app_gets_502_from_the_sidecar(env: SidecarLab) -> None:
    before = env.sidecar.counters("inbound", CLOSED_PORT)
    _, raw = env.raw(env.client, env.node.ipv4, CLOSED_PORT, get("/", close=True))
    [(status, headers, body)] = split_responses(raw)
    assert status == 502
    assert headers["x-sofamesh-error"] == "upstream-connect"
    assert body.startswith(b"sofamesh: upstream connect failed: ") and body.endswith(b"\n")
    delta = env.sidecar.delta_after("inbound", CLOSED_PORT, before, {"responses.5xx": 1})
    assert (delta["errors.upstream_connect"], delta["responses.5xx"]) == (1, 1)
