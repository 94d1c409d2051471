"""Signed agent requests with every part under the test's control (for the security cases)."""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
from typing import Any
from urllib.parse import urlencode

import httpx

from agent.console_client import string_to_sign


def signed(
    base_url: str,
    key_id: str,
    secret: str,
    method: str,
    path: str,
    *,
    query: dict[str, Any] | None = None,
    body: Any = None,
    raw_body: bytes | None = None,
    timestamp: int | None = None,
    nonce: str | None = None,
    sign_path: str | None = None,
    timeout: float = 30,
    content_type: str = "application/json",
) -> httpx.Response:
    """Send one signed request; `sign_path` signs a different path than the one sent."""
    raw_query = urlencode(sorted((query or {}).items()))
    content = (
        raw_body
        if raw_body is not None
        else (json.dumps(body).encode() if body is not None else b"")
    )
    ts = str(int(time.time()) if timestamp is None else timestamp)
    nonce = nonce or secrets.token_hex(16)
    message = string_to_sign(
        method=method,
        path=sign_path or path,
        query=raw_query,
        body=content,
        timestamp=ts,
        nonce=nonce,
    )
    headers = {
        "X-Sofamesh-Key": key_id,
        "X-Sofamesh-Timestamp": ts,
        "X-Sofamesh-Nonce": nonce,
        "X-Sofamesh-Signature": hmac.new(secret.encode(), message, hashlib.sha256).hexdigest(),
        "Content-Type": content_type,
    }
    url = f"{base_url}{path}" + (f"?{raw_query}" if raw_query else "")
    return httpx.request(method, url, content=content or None, headers=headers, timeout=timeout)
