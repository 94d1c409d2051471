"""The bpf(2) calls the eBPF backend needs after loading, made directly (ctypes).

bcc compiles and loads the programs once; everything afterwards (pinning, links, map reads
and writes, object info) goes through these thin wrappers, so status, map updates and
removal need neither bcc nor a compiler, and bcc 0.26's table classes (which do not know
SOCKMAP or batch updates) are not in the way.
"""

from __future__ import annotations

import ctypes
import os
import struct
from dataclasses import dataclass

from hijack.errors import HijackError

_SYS_BPF = 321  # x86_64
_SYS_PIDFD_GETFD = 438

MAP_LOOKUP_ELEM = 1
MAP_UPDATE_ELEM = 2
MAP_DELETE_ELEM = 3
MAP_GET_NEXT_KEY = 4
OBJ_PIN = 6
OBJ_GET = 7
OBJ_GET_INFO_BY_FD = 15
MAP_LOOKUP_BATCH = 24
MAP_UPDATE_BATCH = 26
LINK_CREATE = 28

ENOENT = 2
_ATTR_SIZE = 128

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


class BpfError(HijackError):
    """A bpf(2) call failed; errno is kept for callers that expect some (ENOENT)."""

    def __init__(self, what: str, errno: int) -> None:
        super().__init__(f"{what}: {os.strerror(errno)} (errno {errno})")
        self.errno = errno


def _call(cmd: int, attr: ctypes.Array[ctypes.c_char], what: str) -> int:
    ret = int(_libc.syscall(_SYS_BPF, cmd, attr, _ATTR_SIZE))
    if ret < 0:
        raise BpfError(what, ctypes.get_errno())
    return ret


def _attr() -> ctypes.Array[ctypes.c_char]:
    return ctypes.create_string_buffer(_ATTR_SIZE)


def _addr(buf: ctypes.Array[ctypes.c_char] | None) -> int:
    return ctypes.addressof(buf) if buf is not None else 0


def pin(fd: int, path: str) -> None:
    attr, name = _attr(), ctypes.create_string_buffer(path.encode())
    struct.pack_into("=QI", attr, 0, _addr(name), fd)
    _call(OBJ_PIN, attr, f"pin {path}")


def get_pinned(path: str) -> int:
    """A new fd for the object pinned at path (the caller closes it)."""
    attr, name = _attr(), ctypes.create_string_buffer(path.encode())
    struct.pack_into("=QI", attr, 0, _addr(name), 0)
    return _call(OBJ_GET, attr, f"open pinned {path}")


def link_create(prog_fd: int, target_fd: int, attach_type: int) -> int:
    attr = _attr()
    struct.pack_into("=IIII", attr, 0, prog_fd, target_fd, attach_type, 0)
    return _call(LINK_CREATE, attr, f"link attach type {attach_type}")


def map_update(fd: int, key: bytes, value: bytes, flags: int = 0) -> None:
    attr = _attr()
    k = ctypes.create_string_buffer(key, len(key))
    v = ctypes.create_string_buffer(value, len(value))
    struct.pack_into("=I4xQQQ", attr, 0, fd, _addr(k), _addr(v), flags)
    _call(MAP_UPDATE_ELEM, attr, "map update")


def map_lookup(fd: int, key: bytes, value_size: int) -> bytes | None:
    attr = _attr()
    k, v = ctypes.create_string_buffer(key, len(key)), ctypes.create_string_buffer(value_size)
    struct.pack_into("=I4xQQ", attr, 0, fd, _addr(k), _addr(v))
    try:
        _call(MAP_LOOKUP_ELEM, attr, "map lookup")
    except BpfError as exc:
        if exc.errno == ENOENT:
            return None
        raise
    return v.raw


def map_delete(fd: int, key: bytes) -> bool:
    attr = _attr()
    k = ctypes.create_string_buffer(key, len(key))
    struct.pack_into("=I4xQ", attr, 0, fd, _addr(k))
    try:
        _call(MAP_DELETE_ELEM, attr, "map delete")
    except BpfError as exc:
        if exc.errno == ENOENT:
            return False
        raise
    return True


def map_keys(fd: int, key_size: int) -> list[bytes]:
    """Every key of a hash-like map (not meant for arrays: use batch lookup there)."""
    keys: list[bytes] = []
    current: ctypes.Array[ctypes.c_char] | None = None
    while True:
        attr, nxt = _attr(), ctypes.create_string_buffer(key_size)
        struct.pack_into("=I4xQQ", attr, 0, fd, _addr(current), _addr(nxt))
        try:
            _call(MAP_GET_NEXT_KEY, attr, "map next key")
        except BpfError as exc:
            if exc.errno == ENOENT:
                return keys
            raise
        keys.append(nxt.raw)
        current = nxt


def array_update_batch(fd: int, first: int, values: bytes, value_size: int) -> None:
    """Write consecutive array slots from `first` in one call (BPF_MAP_UPDATE_BATCH)."""
    count = len(values) // value_size
    keys = ctypes.create_string_buffer(
        struct.pack(f"={count}I", *range(first, first + count)), 4 * count
    )
    vals = ctypes.create_string_buffer(values, len(values))
    attr = _attr()
    struct.pack_into("=QQQQII", attr, 0, 0, 0, _addr(keys), _addr(vals), count, fd)
    _call(MAP_UPDATE_BATCH, attr, "array batch update")


def array_read_batch(fd: int, first: int, count: int, value_size: int) -> bytes:
    """Read consecutive array slots with BPF_MAP_LOOKUP_BATCH, from `first` on."""
    keys = ctypes.create_string_buffer(4 * count)
    vals = ctypes.create_string_buffer(value_size * count)
    # The kernel resumes *after* the in_batch key (it walks with get_next_key).
    in_batch = ctypes.create_string_buffer(struct.pack("=I", first - 1), 4) if first else None
    out_batch = ctypes.create_string_buffer(4)
    attr = _attr()
    struct.pack_into(
        "=QQQQII", attr, 0, _addr(in_batch), _addr(out_batch), _addr(keys), _addr(vals), count, fd
    )
    try:
        _call(MAP_LOOKUP_BATCH, attr, "array batch lookup")
    except BpfError as exc:
        if exc.errno != ENOENT:  # ENOENT: the batch reached the end of the array
            raise
    return vals.raw


@dataclass(frozen=True)
class LinkInfo:
    id: int
    prog_id: int
    type: int
    # cgroup links: the cgroup id; netns links: the namespace inode.
    target: int
    attach_type: int


LINK_TYPE_CGROUP = 3
LINK_TYPE_NETNS = 5


def link_info(fd: int) -> LinkInfo:
    info = ctypes.create_string_buffer(64)
    attr = _attr()
    struct.pack_into("=IIQ", attr, 0, fd, len(info), _addr(info))
    _call(OBJ_GET_INFO_BY_FD, attr, "link info")
    kind, link_id, prog_id = struct.unpack_from("=III", info, 0)
    if kind == LINK_TYPE_CGROUP:
        target, attach = struct.unpack_from("=QI", info, 16)
    else:
        target, attach = struct.unpack_from("=II", info, 16)
    return LinkInfo(link_id, prog_id, kind, target, attach)


def object_id(fd: int) -> int:
    """The id of a program or map (the second u32 of its info, after its type)."""
    info = ctypes.create_string_buffer(256)
    attr = _attr()
    struct.pack_into("=IIQ", attr, 0, fd, len(info), _addr(info))
    _call(OBJ_GET_INFO_BY_FD, attr, "object info")
    return int(struct.unpack_from("=II", info, 0)[1])


def pidfd_getfd(pid: int, fd: int) -> int:
    """A duplicate, in this process, of file descriptor `fd` of process `pid`."""
    pidfd = os.pidfd_open(pid)
    try:
        ret = int(_libc.syscall(_SYS_PIDFD_GETFD, pidfd, fd, 0))
        if ret < 0:
            raise BpfError(f"pidfd_getfd({pid}, {fd})", ctypes.get_errno())
        return ret
    finally:
        os.close(pidfd)
