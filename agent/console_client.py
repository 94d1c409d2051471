"""The agent's side of the console API (console/DESIGN.md): signed requests, register,
config long-poll, status and metrics posts.

Every request is signed with the access key (HMAC-SHA256 over method, path, sorted query,
body digest, timestamp and a fresh nonce). Connection failures, 5xx and 429 answers are
retried with jittered exponential backoff (R-AG-7); other answers become exceptions. This
module never prints or logs, and the secret appears in no exception or repr.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import random
import secrets
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import urlencode

import httpx

SidecarStatusValue = Literal["Running", "Terminated", "Waiting", "Unknown"]
# The console holds a long-poll for at most this long.
MAX_WAIT = 60


class ConsoleClientError(Exception):
    """Base of the client's errors."""


class ConsoleUnreachable(ConsoleClientError):
    """No usable answer after every retry (network error, 5xx or 429)."""


class ConsoleAuthError(ConsoleClientError):
    """401/403: unknown or deleted key, bad signature, clock skew beyond 5 minutes."""


class ConsoleRejected(ConsoleClientError):
    """Any other 4xx: the request was understood and refused (nothing was written)."""

    def __init__(self, status: int, detail: Any) -> None:
        self.status = status
        self.detail = detail
        super().__init__(f"console answered {status}: {_describe(detail)}")

    @property
    def fields(self) -> list[str]:
        """The dotted names of the fields the console named (e.g. "body.ip")."""
        if not isinstance(self.detail, list):
            return []
        return [".".join(map(str, d.get("loc", []))) for d in self.detail if isinstance(d, dict)]


@dataclass(frozen=True)
class Credentials:
    key_id: str
    secret: str = field(repr=False)


@dataclass(frozen=True)
class Backoff:
    """Full-jitter exponential backoff: attempt n waits uniform(0, min(cap, base * 2**n))."""

    attempts: int = 5
    base: float = 0.5
    cap: float = 30.0

    def delays(self, rng: random.Random) -> Iterator[float]:
        for attempt in range(self.attempts - 1):
            yield rng.uniform(0, min(self.cap, self.base * 2**attempt))


@dataclass(frozen=True)
class KeyScope:
    key_id: str
    tenant: str
    workspace: str
    instance_id: str


@dataclass(frozen=True)
class Registration:
    node_id: int
    config_version: int


@dataclass(frozen=True)
class NodeConfig:
    version: int
    hijack_enabled: bool
    # A HijackConfig document (hijack/config.py): parse it with HijackConfig.parse.
    hijack: dict[str, Any]
    # Max requests in flight per app port; 0 = unlimited.
    limits: dict[int, int]


@dataclass(frozen=True)
class SidecarStatus:
    sidecar_status: SidecarStatusValue
    healthy: bool
    version: str
    backend: Literal["iptables", "nftables", "ebpf", "none"]
    created_at: datetime | None = None
    rule_digest: str = ""
    ipv6: bool = False


@dataclass(frozen=True)
class NodeGauges:
    cpu_percent: float = 0.0
    mem_percent: float = 0.0
    net_in_bytes: int = 0
    net_out_bytes: int = 0
    load1: float = 0.0


@dataclass(frozen=True)
class PortCounters:
    """Counters since the previous post for one app port and direction."""

    direction: Literal["inbound", "outbound"]
    port: int
    requests: int = 0
    errors: int = 0
    rt_ms_sum: float = 0.0
    bytes_in: int = 0
    bytes_out: int = 0


def string_to_sign(
    *, method: str, path: str, query: str, body: bytes, timestamp: str, nonce: str
) -> bytes:
    canonical_query = "&".join(sorted(p for p in query.split("&") if p))
    return "\n".join(
        (method.upper(), path, canonical_query, hashlib.sha256(body).hexdigest(), timestamp, nonce)
    ).encode()


def sign_headers(
    credentials: Credentials,
    *,
    method: str,
    path: str,
    query: str,
    body: bytes,
    now: float | None = None,
) -> dict[str, str]:
    """The four X-Sofamesh-* headers of one request (a fresh nonce each call)."""
    timestamp = str(int(time.time() if now is None else now))
    nonce = secrets.token_hex(16)
    message = string_to_sign(
        method=method, path=path, query=query, body=body, timestamp=timestamp, nonce=nonce
    )
    digest = hmac.new(credentials.secret.encode(), message, hashlib.sha256).hexdigest()
    return {
        "X-Sofamesh-Key": credentials.key_id,
        "X-Sofamesh-Timestamp": timestamp,
        "X-Sofamesh-Nonce": nonce,
        "X-Sofamesh-Signature": digest,
    }


class ConsoleClient:
    def __init__(
        self,
        url: str,
        credentials: Credentials,
        *,
        timeout: float = 10.0,
        backoff: Backoff | None = None,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._credentials = credentials
        self._timeout = timeout
        self._backoff = backoff or Backoff()
        self._sleep = sleep
        self._rng = rng or random.Random()  # noqa: S311  (jitter, not cryptography)
        self._http = httpx.Client(base_url=url.rstrip("/"), transport=transport, timeout=timeout)

    def __enter__(self) -> ConsoleClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def whoami(self) -> KeyScope:
        """The tenant, workspace and instance the access key belongs to."""
        answer = self._call("GET", "/api/v1/agent/whoami")
        return KeyScope(
            str(answer["key_id"]),
            str(answer["tenant"]),
            str(answer["workspace"]),
            str(answer["instance_id"]),
        )

    def register(self, app: str, ip: str, hostname: str) -> Registration:
        answer = self._call(
            "POST", "/api/v1/agent/register", body={"app": app, "ip": ip, "hostname": hostname}
        )
        return Registration(int(answer["node_id"]), int(answer["config_version"]))

    def config(self, app: str, ip: str, version: int = 0, wait: int = 0) -> NodeConfig | None:
        """The node's config once its version differs from `version`; None when `wait`
        seconds passed without a change (304)."""
        wait = max(0, min(wait, MAX_WAIT))
        query = {"app": app, "ip": ip, "version": str(version), "wait": str(wait)}
        answer = self._call(
            "GET", "/api/v1/agent/config", query=query, timeout=self._timeout + wait
        )
        if answer is None:
            return None
        limits = answer["sidecar"]["limits"]
        return NodeConfig(
            version=int(answer["version"]),
            hijack_enabled=bool(answer["hijack_enabled"]),
            hijack=dict(answer["hijack"]),
            limits={int(port): int(limit) for port, limit in limits.items()},
        )

    def post_status(self, app: str, ip: str, hostname: str, status: SidecarStatus) -> None:
        body = {"app": app, "ip": ip, "hostname": hostname, **asdict(status)}
        if status.created_at is not None:
            body["created_at"] = status.created_at.astimezone(UTC).isoformat()
        self._call("POST", "/api/v1/agent/status", body=body)

    def post_metrics(
        self,
        app: str,
        ip: str,
        node: NodeGauges,
        ports: list[PortCounters],
        at: datetime | None = None,
    ) -> None:
        body = {
            "app": app,
            "ip": ip,
            "at": (at or datetime.now(UTC)).astimezone(UTC).isoformat(),
            "node": asdict(node),
            "ports": [asdict(p) for p in ports],
        }
        self._call("POST", "/api/v1/agent/metrics", body=body)

    def _call(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, str] | None = None,
        body: Mapping[str, Any] | None = None,
        timeout: float | None = None,
    ) -> Any:
        raw_query = urlencode(sorted((query or {}).items()))
        content = json.dumps(body, separators=(",", ":")).encode() if body is not None else b""
        delays = self._backoff.delays(self._rng)
        last = "no attempt made"
        while True:
            headers = sign_headers(
                self._credentials, method=method, path=path, query=raw_query, body=content
            )
            if body is not None:
                headers["Content-Type"] = "application/json"
            url = f"{path}?{raw_query}" if raw_query else path
            try:
                response = self._http.request(
                    method,
                    url,
                    content=content or None,
                    headers=headers,
                    timeout=timeout or self._timeout,
                )
            except httpx.TransportError as exc:
                last = f"{type(exc).__name__}: {exc}"
            else:
                if response.status_code < 500 and response.status_code != 429:
                    return _answer(response)
                last = f"HTTP {response.status_code}"
            delay = next(delays, None)
            if delay is None:
                raise ConsoleUnreachable(f"{method} {path}: {last}")
            self._sleep(delay)


def _answer(response: httpx.Response) -> Any:
    status = response.status_code
    if status in (204, 304):
        return None
    detail: Any
    try:
        payload = response.json()
    except ValueError:
        payload = None
    if 200 <= status < 300:
        return payload
    detail = payload.get("detail") if isinstance(payload, dict) else response.text[:200]
    if status in (401, 403):
        raise ConsoleAuthError(f"console refused the access key: {_describe(detail)}")
    raise ConsoleRejected(status, detail)


def _describe(detail: Any) -> str:
    if isinstance(detail, list):
        return "; ".join(
            f"{'.'.join(map(str, d.get('loc', [])))}: {d.get('msg', '')}"
            for d in detail
            if isinstance(d, dict)
        )
    return str(detail)
