"""URL -> checksum records shared by every process using one cache directory.

Stored as one small JSON file rewritten atomically (temp file, fsync, rename) under an
exclusive flock on ``index.lock``. Why not sqlite3: the data is a few hundred bytes per URL,
readers need no lock at all (a rename is atomic, so they always see a whole file), the file
is readable with ``cat``, and the warm ``prefetch`` path pays only for ``json`` (sqlite3 costs
several ms more to import and needs WAL/busy-timeout tuning to share across processes).
An unreadable index is treated as empty: it only saves network round trips, the modules
themselves are content-addressed and need no index to be found.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field

from wasm_agent.cache.layout import FILE_MODE, CacheLayout
from wasm_agent.fetch.errors import CacheWriteError

log = logging.getLogger(__name__)
VERSION = 1


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
    ``registry/repo@sha256:<hex>`` -> fingerprints of the keys that verified its signature."""

    urls: dict[str, UrlRecord] = field(default_factory=dict)
    digests: dict[str, str] = field(default_factory=dict)
    signatures: dict[str, list[str]] = field(default_factory=dict)

    def file_sha256(self, checksum: str) -> str:
        """The module file sha256 a checksum names (identity for HTTP/file checksums)."""
        return self.digests.get(checksum, checksum)


class Index:
    """Load and update the JSON index of one cache directory."""

    def __init__(self, layout: CacheLayout) -> None:
        self.layout = layout

    def load(self) -> IndexData:
        """Read the index without locking (every write is an atomic rename)."""
        try:
            with open(self.layout.index, "rb") as handle:
                doc = json.load(handle)
            urls = {
                url: UrlRecord(
                    checksum=rec["checksum"],
                    sha256=rec["sha256"],
                    resource_versions=dict(rec.get("resource_versions", {})),
                    last_used=float(rec.get("last_used", 0.0)),
                )
                for url, rec in doc.get("urls", {}).items()
            }
            signatures = {
                name: [str(fp) for fp in fps] for name, fps in doc.get("signatures", {}).items()
            }
            return IndexData(urls=urls, digests=dict(doc.get("digests", {})), signatures=signatures)
        except FileNotFoundError:
            return IndexData()
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
            log.warning(
                "ignoring unreadable cache index",
                extra={"path": str(self.layout.index), "error": str(error)},
            )
            return IndexData()

    def update(self, change: Callable[[IndexData], None]) -> IndexData:
        """Apply ``change`` to the current index under the index lock and write it back.

        The lock is held only for a read-modify-write of a small file (milliseconds).
        """
        try:
            lock_fd = os.open(
                self.layout.index_lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, FILE_MODE
            )
        except OSError as error:
            raise CacheWriteError(
                str(self.layout.root), f"cannot lock the cache index: {error.strerror}"
            ) from None
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX)
            data = self.load()
            change(data)
            self._write(data)
            return data
        finally:
            os.close(lock_fd)

    def _write(self, data: IndexData) -> None:
        doc = {
            "version": VERSION,
            "urls": {
                url: {
                    "checksum": rec.checksum,
                    "sha256": rec.sha256,
                    "resource_versions": rec.resource_versions,
                    "last_used": rec.last_used,
                }
                for url, rec in sorted(data.urls.items())
            },
            "digests": dict(sorted(data.digests.items())),
        }
        if data.signatures:
            doc["signatures"] = dict(sorted(data.signatures.items()))
        tmp = self.layout.root / f".index-{os.urandom(6).hex()}.tmp"
        try:
            with open(tmp, "w", encoding="utf-8") as handle:
                json.dump(doc, handle, indent=1)
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(tmp, FILE_MODE)
            os.replace(tmp, self.layout.index)
        except OSError as error:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise CacheWriteError(
                str(self.layout.root), f"cannot write the cache index: {error.strerror}"
            ) from None
