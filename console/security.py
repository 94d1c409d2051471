"""Password hashes, tokens and the agents' request signature (R-CO-6)."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass

# scrypt at n=2**14, r=8, p=1: ~16 MiB and tens of milliseconds per hash (RFC 7914's
# interactive-login figure); parameters are stored with each hash so they can grow.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
# |now - timestamp| beyond this is stale; nonces are remembered for as long.
SIGNATURE_WINDOW = 300
NONCE_RE = re.compile(r"^[0-9a-fA-F]{16,64}$")
KEY_ID_RE = re.compile(r"^SMAK[0-9A-F]{20}$")

HEADER_KEY = "X-Sofamesh-Key"
HEADER_TIMESTAMP = "X-Sofamesh-Timestamp"
HEADER_NONCE = "X-Sofamesh-Nonce"
HEADER_SIGNATURE = "X-Sofamesh-Signature"


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = _scrypt(password, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P)
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${salt.hex()}${digest.hex()}"


def verify_password(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        actual = _scrypt(password, bytes.fromhex(salt), int(n), int(r), int(p))
    except ValueError:
        return False
    return hmac.compare_digest(actual.hex(), digest)


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(
        password.encode(), salt=salt, n=n, r=r, p=p, maxmem=2 * 128 * r * n + 2**20, dklen=32
    )


def new_key_id() -> str:
    return "SMAK" + secrets.token_hex(10).upper()


def new_secret() -> str:
    return secrets.token_urlsafe(30)


def new_token() -> str:
    return secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def canonical_query(raw_query: str) -> str:
    """The raw `k=v` pairs of the query string, sorted, joined by `&` (never re-encoded)."""
    return "&".join(sorted(part for part in raw_query.split("&") if part))


def string_to_sign(
    *, method: str, path: str, raw_query: str, body: bytes, timestamp: str, nonce: str
) -> bytes:
    return "\n".join(
        (
            method.upper(),
            path,
            canonical_query(raw_query),
            hashlib.sha256(body).hexdigest(),
            timestamp,
            nonce,
        )
    ).encode()


def signature(secret: str, message: bytes) -> str:
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class SignedHeaders:
    """The four headers of a signed request, checked for shape (not yet for validity)."""

    key_id: str
    timestamp: int
    nonce: str
    signature: str

    @classmethod
    def parse(cls, get: dict[str, str]) -> SignedHeaders:
        """`get` maps lower-case header names to values; raises ValueError naming the header."""
        values = {
            name: get.get(name.lower(), "")
            for name in (HEADER_KEY, HEADER_TIMESTAMP, HEADER_NONCE, HEADER_SIGNATURE)
        }
        for name, value in values.items():
            if not value:
                raise ValueError(f"missing header {name}")
        if not KEY_ID_RE.match(values[HEADER_KEY]):
            raise ValueError(f"{HEADER_KEY} is not an access key id")
        if not values[HEADER_TIMESTAMP].isdigit() or len(values[HEADER_TIMESTAMP]) > 12:
            raise ValueError(f"{HEADER_TIMESTAMP} must be unix seconds")
        if not NONCE_RE.match(values[HEADER_NONCE]):
            raise ValueError(f"{HEADER_NONCE} must be 16 to 64 hex characters")
        if not re.fullmatch(r"[0-9a-f]{64}", values[HEADER_SIGNATURE]):
            raise ValueError(f"{HEADER_SIGNATURE} must be 64 lower-case hex characters")
        return cls(
            key_id=values[HEADER_KEY],
            timestamp=int(values[HEADER_TIMESTAMP]),
            nonce=values[HEADER_NONCE].lower(),
            signature=values[HEADER_SIGNATURE],
        )

    def is_fresh(self, now: float | None = None) -> bool:
        return abs((time.time() if now is None else now) - self.timestamp) <= SIGNATURE_WINDOW
