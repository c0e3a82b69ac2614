"""URL -> checksum records shared by every process using one cache directory.

Stored as one small JSON file rewritten atomically (temp file, fsync, rename) under an
exclusive flock on ``index.lock``. Why not sqlite3: the data is a few hundred bytes per URL,
readers need no lock at all (a rename is atomic, so they always see a whole file), the file
is readable with ``cat``, and the warm ``prefetch`` path pays only for ``json`` (sqlite3 costs
several ms more to import and needs WAL/busy-timeout tuning to share across processes).
An unreadable index is treated as empty: it only saves network round trips, the modules
themselves are content-addressed and need no index to be found.

Every entry carries an HMAC made with the cache's key (:mod:`wasm_agent.cache.integrity`); an
entry whose MAC does not verify is dropped on load (and listed in ``IndexData.problems``), so a
hand-edited index can only lose entries, never redirect a URL or a digest. URLs with
credentials (user-info, a query string) are stored as ``redacted URL#<MAC of the URL>``: the
index never holds a password or token. A parsed index is kept per (inode, size, mtime, ctime).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from wasm_agent.cache.errors import CacheWriteError
from wasm_agent.cache.integrity import IndexKey, load_key, read_regular
from wasm_agent.cache.layout import INDEX_MODE, CacheLayout
from wasm_agent.cache.locks import open_lock_file
from wasm_agent.core.logs import redact_url

log = logging.getLogger(__name__)
VERSION = 2
MAX_INDEX_BYTES = 64 << 20  # a few hundred bytes per URL: far beyond any real cache


@dataclass
class UrlRecord:
    """What the last successful fetch of one URL produced."""

    checksum: str  # what a configured sha256 matches (OCI: manifest digest hex)
    sha256: str  # sha256 of the module file (its name in modules/)
    resource_versions: dict[str, str] = field(default_factory=dict)  # resource name -> version
    last_used: float = 0.0


@dataclass
class IndexData:
    """The whole index: URL records, checksum -> file sha256 for OCI digests, and
    ``registry/repo@sha256:<hex>`` -> fingerprints of the keys that verified its signature.
    ``problems`` lists the entries dropped on load because their MAC did not verify."""

    urls: dict[str, UrlRecord] = field(default_factory=dict)
    digests: dict[str, str] = field(default_factory=dict)
    signatures: dict[str, list[str]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    unreadable: str = ""  # why index.json could not be read (then it is treated as empty)

    def file_sha256(self, checksum: str) -> str:
        """The module file sha256 a checksum names (identity for HTTP/file checksums)."""
        return self.digests.get(checksum, checksum)

    def forget_modules(self, gone: set[str]) -> None:
        """Drop the URLs and digests that name a module file (sha256) in ``gone``."""
        self.urls = {u: r for u, r in self.urls.items() if r.sha256 not in gone}
        self.digests = {c: s for c, s in self.digests.items() if s not in gone}


def _url_fields(url: str, rec: UrlRecord) -> tuple[str, ...]:
    return ("url", url, rec.checksum, rec.sha256)


def _sig_fields(name: str, fingerprints: list[str]) -> tuple[str, ...]:
    return ("signature", name, ",".join(sorted(fingerprints)))


class Index:
    """Load and update the JSON index of one cache directory."""

    def __init__(self, layout: CacheLayout) -> None:
        self.layout = layout
        self._key: IndexKey | None = None
        self._cached: tuple[tuple[int, ...], IndexData] | None = None
        self._pending: list[Callable[[IndexData], None]] = []

    def key(self, create: bool = False) -> IndexKey:
        """The MAC key (read once; created by the first writer)."""
        if self._key is None or (create and self._key.key is None):
            self._key = load_key(self.layout, create=create)
        return self._key

    def url_key(self, url: str) -> str:
        """How ``url`` is named in the index: as is, or redacted plus a MAC if it carries
        credentials (user-info, query) or anything else :func:`redact_url` drops."""
        shown = redact_url(url)
        if shown == url:
            return url
        try:
            key = self.key(create=True)
        except CacheWriteError:  # a read-only cache without a key: such URLs are never found
            key = IndexKey(None)
        return f"{shown}#{key.mac('url-name', url)[:32] or 'unkeyed'}"

    def load(self) -> IndexData:
        """The authenticated index, without locking (every write is an atomic rename). The
        result is shared with later calls: do not modify it (use :meth:`update`)."""
        try:
            st = os.lstat(self.layout.index)
        except OSError:
            return IndexData()
        stamp = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        if self._cached is not None and self._cached[0] == stamp:
            return self._cached[1]
        data = self._parse()
        self._cached = (stamp, data)
        return data

    def _parse(self) -> IndexData:
        """Read and authenticate the index; an unreadable one (not a regular file, over
        :data:`MAX_INDEX_BYTES`, not JSON) is empty, with the reason in ``unreadable``."""
        try:
            doc = json.loads(read_regular(self.layout.index, MAX_INDEX_BYTES))
            return self._authentic(doc)
        except FileNotFoundError:
            return IndexData()
        except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError) as error:
            reason = _reason(error)  # RecursionError: JSON nested too deep to parse
            log.warning(
                "ignoring unreadable cache index",
                extra={"path": str(self.layout.index), "error": reason},
            )
            return IndexData(unreadable=reason)

    def _authentic(self, doc: dict) -> IndexData:
        """Keep the entries whose MAC verifies; list the others as problems."""
        key = self.key()
        data = IndexData()
        for url, raw in doc.get("urls", {}).items():
            rec = UrlRecord(
                checksum=str(raw["checksum"]),
                sha256=str(raw["sha256"]),
                resource_versions={
                    str(k): str(v) for k, v in raw.get("resource_versions", {}).items()
                },
                last_used=float(raw.get("last_used", 0.0)),
            )
            if key.verify(raw.get("mac"), *_url_fields(url, rec)):
                data.urls[url] = rec
            else:
                data.problems.append(f"urls[{redact_url(url)}] -> {rec.sha256}")
        macs = doc.get("macs", {})
        for checksum, sha in doc.get("digests", {}).items():
            if key.verify(macs.get(f"digest:{checksum}"), "digest", checksum, str(sha)):
                data.digests[checksum] = str(sha)
            else:
                data.problems.append(f"digests[{checksum}] -> {sha}")
        for name, fps in doc.get("signatures", {}).items():
            prints = [str(fp) for fp in fps]
            if key.verify(macs.get(f"signature:{name}"), *_sig_fields(name, prints)):
                data.signatures[name] = prints
            else:
                data.problems.append(f"signatures[{name}]")
        if data.problems:
            log.warning(
                "ignoring cache index entries that were not written by this cache's writer",
                extra={"path": str(self.layout.index), "entries": "; ".join(data.problems)},
            )
        return data

    def update(self, change: Callable[[IndexData], None]) -> IndexData:
        """Apply ``change`` to the current index under the index lock and write it back.

        The lock is held only for a read-modify-write of a small file (milliseconds).
        """
        key = self.key(create=True)
        try:
            lock_fd = open_lock_file(self.layout.index_lock)
        except OSError as error:
            raise CacheWriteError(
                str(self.layout.root), f"cannot lock the cache index: {_reason(error)}"
            ) from None
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX)
            data = self._parse()
            change(data)
            data.problems = []
            self._write(data, key)
            return data
        finally:
            os.close(lock_fd)

    def record(self, change: Callable[[IndexData], None], *, defer: bool = False) -> None:
        """:meth:`update` with ``change``. ``defer`` (a cache hit): inside an event loop, batch
        it with the other hits of this loop iteration (one write, not one per hit), and only
        log a failure (a hit in a read-only cache baked into an image is still a hit)."""
        loop = _running_loop() if defer else None
        if loop is None:
            self._apply([change], quiet=defer)
            return
        self._pending.append(change)
        if len(self._pending) == 1:
            loop.call_soon(self.flush)

    def flush(self) -> None:
        """Write the changes deferred by :meth:`record`."""
        changes, self._pending = self._pending, []
        if changes:
            self._apply(changes, quiet=True)

    def _apply(self, changes: list[Callable[[IndexData], None]], quiet: bool) -> None:
        def apply(current: IndexData) -> None:
            for change in changes:
                change(current)

        try:
            self.update(apply)
        except CacheWriteError as error:
            if not quiet:
                raise
            log.warning("cannot record a cache hit", extra={"error": error.cause})

    def _write(self, data: IndexData, key: IndexKey) -> None:
        macs = {f"digest:{c}": key.mac("digest", c, s) for c, s in data.digests.items()}
        macs.update(
            {f"signature:{n}": key.mac(*_sig_fields(n, fps)) for n, fps in data.signatures.items()}
        )
        doc = {
            "version": VERSION,
            "urls": {
                url: {
                    "checksum": rec.checksum,
                    "sha256": rec.sha256,
                    "resource_versions": rec.resource_versions,
                    "last_used": rec.last_used,
                    "mac": key.mac(*_url_fields(url, rec)),
                }
                for url, rec in sorted(data.urls.items())
            },
            "digests": dict(sorted(data.digests.items())),
            "signatures": dict(sorted(data.signatures.items())),
            "macs": dict(sorted(macs.items())),
        }
        tmp = self.layout.root / f".index-{os.urandom(6).hex()}.tmp"
        try:
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            with os.fdopen(os.open(tmp, flags, 0o600), "w", encoding="utf-8") as handle:
                json.dump(doc, handle, indent=1)
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(tmp, INDEX_MODE)
            os.replace(tmp, self.layout.index)
        except OSError as error:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise CacheWriteError(
                str(self.layout.root), f"cannot write the cache index: {error.strerror}"
            ) from None


def _reason(error: BaseException) -> str:
    """An error's reason without the errno number."""
    return getattr(error, "strerror", None) or str(error)


def _running_loop() -> Any:
    """The running asyncio loop, if any (without importing asyncio: warm ``prefetch``)."""
    aio = sys.modules.get("asyncio")
    if aio is None:
        return None
    try:
        return aio.get_running_loop()
    except RuntimeError:
        return None
