"""Proof that a module handed to Envoy is the one its config names, and the cache's file rules.

Two kinds of evidence (docs/security.md says why they hold):

* content: a module file is served only if its bytes hash to its name (its sha256), checked at
  hand-over through a descriptor opened with ``O_NOFOLLOW``. The proof is remembered in this
  process per (device, inode, size, mtime, ctime): any write to the file changes its ctime
  (which no unprivileged process can set back), so a remembered proof never outlives the bytes
  it was made for.
* index entries: what no content can prove (an OCI manifest digest -> module sha256, a URL ->
  checksum for unpinned URLs, the keys that verified a signature) carries an HMAC-SHA256 made
  with ``<cache>/index.key`` (32 random bytes, 0600, created by the first writer). An entry
  whose MAC does not verify is dropped when the index is read, so it is never served. If the
  key exists but we may not read it, the index is trusted only when root owns every file and
  directory of the cache and nobody else may write them (a read-only cache baked by root).

File rules: module files and the index are written 0444, directories 0700; the agent refuses a
cache whose directories (``modules``, ``locks``, ``compiled``, ``host``, ``quarantine``), index,
key or index lock are symlinks, writable by group or others, or owned by a user other than
itself or root. Files opened by name go through :func:`open_regular` (no link, no FIFO wait).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import hmac
import logging
import os
import stat
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from wasm_agent.cache.errors import CacheWriteError
from wasm_agent.cache.layout import CacheLayout

log = logging.getLogger(__name__)

KEY_NAME = "index.key"
KEY_MODE = 0o600
KEY_SIZE = 32
PROOF_CACHE_SIZE = 4096
_CHUNK = 1 << 20


class InsecureCache(CacheWriteError):
    """The cache directory, index or key may be changed by someone other than its owner."""


def key_path(layout: CacheLayout) -> Path:
    """``<cache>/index.key``: the MAC key of the index entries."""
    return layout.root / KEY_NAME


def check_error(layout: CacheLayout, path: Path, why: str) -> InsecureCache:
    """The :class:`InsecureCache` refusing ``path`` for ``why``, with the fix to apply."""
    if why == "is a symlink":
        fix = "the agent never follows a link inside the cache: remove the link"
    elif why.startswith(("is not a", "holds")):
        fix = "remove it (the agent recreates what it needs)"
    else:
        fix = "fix it (chmod go-w, chown to the agent's user)"
    return InsecureCache(
        str(layout.root),
        f"refusing to use the cache: {path} {why}; {fix} or choose another --cache-dir",
    )


class NotRegularFile(OSError):
    """A file the cache opens by name is not a regular file (a FIFO, a device, a directory)."""

    def __init__(self, path: Path) -> None:
        super().__init__(errno.EINVAL, "not a regular file", str(path))


def open_regular(path: Path, flags: int = os.O_RDONLY, mode: int = 0o600) -> int:
    """Open ``path`` without following a link or waiting on a FIFO (``O_NOFOLLOW|O_NONBLOCK``)
    and return the descriptor only if it is a regular file; else raise :class:`NotRegularFile`
    (or the ``OSError`` of ``open``: ELOOP for a symlink)."""
    fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, mode)
    try:
        st = os.fstat(fd)
    except OSError:
        os.close(fd)
        raise
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise NotRegularFile(path)
    return fd


def read_regular(path: Path, limit: int) -> bytes:
    """The bytes of regular file ``path`` (see :func:`open_regular`), at most ``limit``; a
    larger file raises ``ValueError`` without being read whole."""
    fd = open_regular(path)
    try:
        size = os.fstat(fd).st_size
        if size > limit:
            raise ValueError(f"{path} is {size} bytes, over the {limit >> 20} MiB limit")
        chunks = []
        total = 0
        while chunk := os.read(fd, min(_CHUNK, limit + 1 - total)):
            chunks.append(chunk)
            total += len(chunk)
            if total > limit:  # grew while we read it
                raise ValueError(f"{path} grew over the {limit >> 20} MiB limit while read")
        return b"".join(chunks)
    finally:
        os.close(fd)


def check_path(layout: CacheLayout, path: Path, directory: bool) -> os.stat_result | None:
    """lstat ``path`` and refuse a symlink, a wrong type, or one others may write.

    Returns None if ``path`` does not exist. The cache root itself may be reached through a
    symlink (the user names it); nothing inside it may be one.
    """
    try:
        st = os.stat(path) if path == layout.root else os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):  # layout.ensure() reports the latter
        return None
    if stat.S_ISLNK(st.st_mode):
        raise check_error(layout, path, "is a symlink")
    if directory != stat.S_ISDIR(st.st_mode):
        raise check_error(layout, path, "is not a directory" if directory else "is not a file")
    if st.st_mode & 0o022:
        raise check_error(layout, path, f"is writable by other users (mode {st.st_mode & 0o777:o})")
    if st.st_uid not in (os.geteuid(), 0):
        raise check_error(layout, path, f"is owned by another user (uid {st.st_uid})")
    return st


def check_tree(layout: CacheLayout) -> bool:
    """Refuse (:class:`InsecureCache`) a cache others may change; True if root owns it all."""
    owners = set()
    directories = (layout.root, layout.modules, layout.locks, layout.compiled)
    for path in (*directories, layout.host, layout.quarantine):
        st = check_path(layout, path, directory=True)
        if st is not None:
            owners.add(st.st_uid)
    for path in (layout.index, key_path(layout), layout.index_lock):
        st = check_path(layout, path, directory=False)
        if st is not None:
            owners.add(st.st_uid)
    return owners == {0}


@dataclass(frozen=True)
class IndexKey:
    """The key that MACs index entries; ``key`` None means entries cannot be authenticated,
    and then ``owner_trusted`` says whether only root could have written them."""

    key: bytes | None
    owner_trusted: bool = False

    def mac(self, *fields: str) -> str:
        """HMAC-SHA256 (hex) of the NUL-joined ``fields``; "" without a key."""
        if self.key is None:
            return ""
        return hmac.new(self.key, "\0".join(fields).encode(), hashlib.sha256).hexdigest()

    def verify(self, mac: object, *fields: str) -> bool:
        """Whether ``mac`` authenticates ``fields`` (always, for a root-owned read-only cache)."""
        if self.key is None:
            return self.owner_trusted
        return isinstance(mac, str) and hmac.compare_digest(mac, self.mac(*fields))


def load_key(layout: CacheLayout, create: bool) -> IndexKey:
    """Read ``index.key``, creating it (atomically, 0600) when missing and ``create``."""
    path = key_path(layout)
    root_owned = check_tree(layout)
    try:
        return IndexKey(_read_key(layout, path))
    except FileNotFoundError:
        if not create:
            return IndexKey(None)
    except PermissionError:
        return IndexKey(None, owner_trusted=root_owned and os.geteuid() != 0)
    _create_key(layout, path)
    return IndexKey(_read_key(layout, path))


def _read_key(layout: CacheLayout, path: Path) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise check_error(layout, path, "is not a regular file")
        if st.st_mode & 0o077:
            raise check_error(
                layout, path, f"is readable or writable by others ({st.st_mode & 0o777:o})"
            )
        key = os.read(fd, KEY_SIZE + 1)
    finally:
        os.close(fd)
    if len(key) != KEY_SIZE:
        raise check_error(layout, path, f"holds {len(key)} bytes, not a {KEY_SIZE}-byte key")
    return key


def _create_key(layout: CacheLayout, path: Path) -> None:
    """Write a fresh key to a temp file and link it into place (loses to a concurrent writer)."""
    tmp = layout.root / f".key-{os.urandom(6).hex()}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, KEY_MODE)
        try:
            os.fchmod(fd, KEY_MODE)
            os.write(fd, os.urandom(KEY_SIZE))
            os.fsync(fd)
        finally:
            os.close(fd)
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
    except OSError as error:
        raise CacheWriteError(
            str(layout.root), f"cannot create the cache key {path}: {error.strerror}"
        ) from None
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


ProofKey = tuple[int, int, int, int, int]


def _proof_key(st: os.stat_result) -> ProofKey:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class Prover:
    """Proves module files by content; remembers each proof per (dev, inode, size, mtime,
    ctime) so a repeated hit costs an ``open`` and an ``fstat``."""

    def __init__(self, size: int = PROOF_CACHE_SIZE, max_bytes: int | None = None) -> None:
        self._proofs: OrderedDict[ProofKey, str] = OrderedDict()
        self._size = size
        self._max_bytes = max_bytes  # no module is larger: a bigger file is refused unread

    def prove(self, path: Path, sha256: str) -> os.stat_result | None:
        """The file's stat if ``path`` is a regular file (not a symlink) whose content hashes
        to ``sha256``, else None (logged)."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
        except FileNotFoundError:
            return None
        except OSError as error:  # ELOOP: a symlink
            log.warning(
                "refusing a module file", extra={"path": str(path), "error": error.strerror}
            )
            return None
        try:
            return self._prove_fd(fd, path, sha256)
        finally:
            os.close(fd)

    def _prove_fd(self, fd: int, path: Path, sha256: str) -> os.stat_result | None:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            log.warning("refusing a module that is not a regular file", extra={"path": str(path)})
            return None
        if self._max_bytes is not None and st.st_size > self._max_bytes:
            log.warning(
                "refusing a module file larger than any module accepted; not reading it",
                extra={"path": str(path), "size": st.st_size, "limit": self._max_bytes},
            )
            return None
        key = _proof_key(st)
        if self._proofs.get(key) == sha256:
            self._proofs.move_to_end(key)
            return st
        actual = hash_fd(fd)
        if _proof_key(os.fstat(fd)) != key:  # written while we read it
            log.warning("module file changed while being checked", extra={"path": str(path)})
            return None
        if actual != sha256:
            log.warning(
                "module file does not match its checksum; not serving it",
                extra={"path": str(path), "expected": sha256, "actual": actual},
            )
            return None
        self._proofs[key] = sha256
        if len(self._proofs) > self._size:
            self._proofs.popitem(last=False)
        return st


def hash_fd(fd: int) -> str:
    """sha256 hex of everything readable from ``fd`` (from offset 0)."""
    digest = hashlib.sha256()
    offset = 0
    while chunk := os.pread(fd, _CHUNK, offset):
        digest.update(chunk)
        offset += len(chunk)
    return digest.hexdigest()
