"""Unwrap gzip and tar wrappers around a Wasm binary, safely.

Repeated until the Wasm magic appears (at most :data:`MAX_DEPTH` wrappers): gzip is
decompressed incrementally and stopped at the size cap (bombs never fill memory); a tar archive
yields its first regular file, and refuses absolute paths, ``..`` components, links and device
entries met before it. Bytes that are neither gzip, tar nor Wasm are returned unchanged.
"""

from __future__ import annotations

import io
import tarfile
import zlib

from wasm_agent.fetch.errors import UnboxError
from wasm_agent.fetch.model import WASM_MAGIC

GZIP_MAGIC = b"\x1f\x8b"
MAX_DEPTH = 4
_CHUNK = 1 << 20


def is_gzip(data: bytes) -> bool:
    return data[:2] == GZIP_MAGIC


def is_tar(data: bytes) -> bool:
    """A POSIX (ustar) or GNU tar header: ``ustar`` at offset 257."""
    return len(data) >= 512 and data[257:262] == b"ustar"


def unbox(data: bytes, max_size: int, *, url: str = "") -> bytes:
    """Return the Wasm binary inside ``data`` (or ``data`` itself); raise :class:`UnboxError`.

    ``max_size`` caps every decompressed or extracted layer; ``url`` names the module in errors.
    """
    for _ in range(MAX_DEPTH):
        if data[:4] == WASM_MAGIC:
            return data
        if is_gzip(data):
            data = gunzip(data, max_size, url=url)
        elif is_tar(data):
            data = first_tar_file(data, max_size, url=url)
        else:
            return data
    if data[:4] == WASM_MAGIC or not (is_gzip(data) or is_tar(data)):
        return data
    raise UnboxError(url, f"more than {MAX_DEPTH} nested gzip/tar wrappers")


def gunzip(data: bytes, max_size: int, *, url: str = "") -> bytes:
    """Decompress gzip ``data`` (all members), stopping as soon as output passes ``max_size``."""
    out = bytearray()
    pending = data
    while True:
        inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        try:
            chunk = inflater.decompress(pending, _CHUNK)
            while True:
                out += chunk
                if len(out) > max_size:
                    raise UnboxError(url, f"decompressed size exceeds {max_size} bytes")
                if inflater.eof or not (inflater.unconsumed_tail or chunk):
                    break
                chunk = inflater.decompress(inflater.unconsumed_tail, _CHUNK)
        except zlib.error as exc:
            raise UnboxError(url, f"malformed gzip data: {exc}") from None
        if not inflater.eof:
            raise UnboxError(url, "truncated gzip data")
        pending = inflater.unused_data
        if not pending.strip(b"\0"):
            return bytes(out)
        if not is_gzip(pending):
            raise UnboxError(url, "unexpected data after the gzip stream")


def _check_member(member: tarfile.TarInfo, url: str) -> None:
    name = member.name
    parts = name.replace("\\", "/").split("/")
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise UnboxError(url, f"tar member {name!r} has an absolute path")
    if ".." in parts:
        raise UnboxError(url, f"tar member {name!r} has a '..' path component")
    if member.issym() or member.islnk():
        raise UnboxError(url, f"tar member {name!r} is a link (to {member.linkname!r})")
    if not (member.isreg() or member.isdir()):
        raise UnboxError(url, f"tar member {name!r} is a device, fifo or special file")


def first_tar_file(data: bytes, max_size: int, *, url: str = "") -> bytes:
    """The content of the first regular file in tar ``data`` (directories are skipped)."""
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as archive:
            for member in archive:
                _check_member(member, url)
                if member.isdir():
                    continue
                if member.size > max_size:
                    raise UnboxError(
                        url, f"tar member {member.name!r} size exceeds {max_size} bytes"
                    )
                extracted = archive.extractfile(member)
                content = extracted.read() if extracted is not None else b""
                if len(content) != member.size:
                    raise UnboxError(url, f"tar member {member.name!r} is truncated")
                return content
    except tarfile.TarError as exc:
        raise UnboxError(url, f"malformed tar archive: {exc}") from None
    raise UnboxError(url, "tar archive holds no regular file")
