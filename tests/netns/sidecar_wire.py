"""What crossed the wire, parsed: raw HTTP/1.1 responses, digests, and wrk's report."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def without_date(raw: bytes) -> bytes:
    """Response bytes with every Date header's value blanked (the one thing that moves)."""
    return re.sub(rb"(?im)^date: [^\r\n]*", b"Date: -", raw)


def split_responses(raw: bytes) -> list[tuple[int, dict[str, str], bytes]]:
    """The HTTP/1.1 responses in `raw`, in order: (status, lower-cased headers, body bytes)."""
    responses = []
    rest = raw
    while rest:
        head, sep, rest = rest.partition(b"\r\n\r\n")
        assert sep, f"incomplete response head: {head[:200]!r}"
        first, *lines = head.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in lines)}
        status = int(first.split()[1])
        if "chunked" in headers.get("transfer-encoding", ""):
            end = chunked_length(rest)
            body, rest = rest[:end], rest[end:]
        else:
            size = int(headers.get("content-length", len(rest)))
            body, rest = rest[:size], rest[size:]
        responses.append((status, headers, body))
    return responses


def chunked_length(data: bytes) -> int:
    """How many bytes of `data` the chunked body at its start takes (chunks and trailers)."""
    pos = 0
    while True:
        eol = data.index(b"\r\n", pos)
        size = int(data[pos:eol].split(b";")[0], 16)
        pos = eol + 2
        if size == 0:
            return pos + 2 if data[pos : pos + 2] == b"\r\n" else data.index(b"\r\n\r\n", pos) + 4
        pos += size + 2


@dataclass(frozen=True)
class WrkResult:
    requests: int
    connect_errors: int
    read_errors: int
    write_errors: int
    timeouts: int
    non_2xx_3xx: int
    text: str

    @property
    def socket_errors(self) -> int:
        return self.connect_errors + self.read_errors + self.write_errors + self.timeouts


def parse_wrk(text: str) -> WrkResult:
    """wrk prints the socket error and non-2xx lines only when they are not zero."""
    total = re.search(r"(\d+) requests in ", text)
    assert total, f"not wrk output: {text!r}"
    errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text
    )
    connect, read, write, timeout = (int(n) for n in errors.groups()) if errors else (0,) * 4
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    return WrkResult(
        requests=int(total[1]),
        connect_errors=connect,
        read_errors=read,
        write_errors=write,
        timeouts=timeout,
        non_2xx_3xx=int(non2xx[1]) if non2xx else 0,
        text=text,
    )
