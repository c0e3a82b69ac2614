"""The cache size cap (``--cache-max-bytes``): least-recently-used eviction of unused files.

What counts: every module file (``modules/*.wasm``) and every file of wasmtime's compiled-
artifact cache (``compiled/``). Before a new module is committed, the oldest files (by mtime:
a module's mtime is its last use, an artifact's its last write) are removed until the new one
fits. A module held by any process (the shared flock of
:func:`~wasm_agent.cache.locks.hold_file`, taken for every module a running Envoy uses) is
never removed: the purger's exclusive non-blocking flock fails on it, as in ``purge.py``.
Compiled artifacts are only a compile speed-up and are always removable. A module that does not
fit even then is refused with :class:`CacheFull`, a fetch error naming the sizes.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from wasm_agent.cache.errors import CacheWriteError
from wasm_agent.cache.index import Index
from wasm_agent.cache.layout import CacheLayout
from wasm_agent.cache.locks import MODULE_LOCK_OPEN_FLAGS, try_lock
from wasm_agent.cache.metrics import CACHE_ENTRIES
from wasm_agent.core.metrics import REGISTRY

log = logging.getLogger(__name__)
STATS_SUFFIX = ".stats"  # wasmtime's per-artifact usage file, removed with its artifact
CAP_HINT = "--cache-max-bytes / WASM_AGENT_CACHE_MAX_BYTES"
CACHE_BYTES = REGISTRY.gauge(
    "wasm_cache_bytes", "Bytes of Wasm modules and compiled artifacts in the cache."
)
CACHE_EVICTIONS = REGISTRY.counter(
    "wasm_cache_eviction_count",
    "Files evicted to keep the cache under --cache-max-bytes, by kind (module or compiled).",
    labels=("kind",),
).preset(kind=("module", "compiled"))


class CacheFull(CacheWriteError):
    """A module cannot fit in the cache under its size cap (a fetch error, never stored)."""


@dataclass(frozen=True)
class Entry:
    """One removable file: its path, size, last use and kind (``module`` or ``compiled``)."""

    path: Path
    size: int
    mtime: float
    kind: str


def _files(directory: Path) -> list[tuple[Path, os.stat_result]]:
    found: list[tuple[Path, os.stat_result]] = []
    for root, _dirs, names in os.walk(directory):
        for name in names:
            path = Path(root) / name
            with contextlib.suppress(FileNotFoundError):
                st = path.lstat()
                if not os.path.islink(path):
                    found.append((path, st))
    return found


def scan(layout: CacheLayout) -> tuple[int, list[Entry]]:
    """Total bytes of modules and compiled artifacts, and the files eviction may consider."""
    total = 0
    entries: list[Entry] = []
    for path in layout.module_files():
        with contextlib.suppress(FileNotFoundError):
            st = path.lstat()
            if not stat.S_ISREG(st.st_mode):
                continue  # a link or a FIFO planted under a module's name: `cache verify` says so
            total += st.st_size
            entries.append(Entry(path, st.st_size, st.st_mtime, "module"))
    artifacts = layout.compiled / "artifacts"
    stats: dict[Path, int] = {}
    for path, st in _files(layout.compiled):
        total += st.st_size
        if path.name.endswith(STATS_SUFFIX):
            stats[path.with_name(path.name[: -len(STATS_SUFFIX)])] = st.st_size
        elif artifacts in path.parents and not path.name.startswith("."):
            entries.append(Entry(path, st.st_size, st.st_mtime, "compiled"))
    entries = [
        Entry(e.path, e.size + stats.get(e.path, 0), e.mtime, e.kind) if e.kind == "compiled" else e
        for e in entries
    ]
    return total, entries


def cache_bytes(layout: CacheLayout) -> int:
    """Bytes of modules and compiled artifacts now (also sets ``wasm_cache_bytes``)."""
    total, _ = scan(layout)
    CACHE_BYTES.set(total)
    return total


class SizeCap:
    """Keeps one cache directory under ``max_bytes`` (None: no cap, only the bytes metric)."""

    def __init__(self, layout: CacheLayout, index: Index, max_bytes: int | None) -> None:
        self.layout = layout
        self.index = index
        self.max_bytes = max_bytes

    def make_room(self, needed: int, url: str) -> list[Path]:
        """Evict least-recently-used unused files until ``needed`` more bytes fit.

        Returns the removed paths; raises :class:`CacheFull` if the module cannot fit.
        """
        cap = self.max_bytes
        if cap is None:
            CACHE_BYTES.set(cache_bytes(self.layout) + needed)
            return []
        if needed > cap:
            raise CacheFull(
                url, f"module of {needed} bytes is larger than the cache size cap of {cap} bytes "
                f"({CAP_HINT})",
            )  # fmt: skip
        total, entries = scan(self.layout)
        removed: list[Path] = []
        gone: set[str] = set()
        for entry in sorted(entries, key=lambda e: e.mtime):
            if total + needed <= cap:
                break
            if not self._evict(entry):
                continue
            total -= entry.size
            removed.append(entry.path)
            if entry.kind == "module":
                gone.add(entry.path.stem)
        if gone:
            self.index.update(lambda data: data.forget_modules(gone))
            CACHE_ENTRIES.set(len(self.layout.module_files()))
        CACHE_BYTES.set(total)
        if total + needed > cap:
            raise CacheFull(
                url, f"cannot fit a module of {needed} bytes: the cache holds {total} bytes in use "
                f"by running Envoys (or being written) of its {cap}-byte cap ({CAP_HINT})",
            )  # fmt: skip
        CACHE_BYTES.set(total + needed)
        return removed

    def _evict(self, entry: Entry) -> bool:
        if entry.kind == "compiled":
            removed = _unlink(entry.path)
            _unlink(entry.path.with_name(entry.path.name + STATS_SUFFIX))
        else:
            removed = _unlink_unheld(entry.path, entry.mtime)
        if removed:
            CACHE_EVICTIONS.inc(kind=entry.kind)
            log.info(
                "evicted from the cache (size cap)",
                extra={"path": str(entry.path), "size": entry.size, "kind": entry.kind},
            )
        return removed


def _unlink(path: Path) -> bool:
    try:
        os.unlink(path)
    except OSError:  # gone already, or a read-only cache
        return False
    return True


def _unlink_unheld(path: Path, mtime: float) -> bool:
    """Remove a module file unless some process holds it or used it since it was scanned."""
    try:
        fd = os.open(path, MODULE_LOCK_OPEN_FLAGS)
    except OSError:  # gone already, or a link (ELOOP) planted since the scan: never followed
        return False
    try:
        if not try_lock(fd, exclusive=True):
            return False  # in use by an Envoy (here or in another process)
        current = os.stat(path)
        if current.st_ino != os.fstat(fd).st_ino or current.st_mtime > mtime:
            return False  # replaced, or used meanwhile: no longer the least recent
        os.unlink(path)
        return True
    except OSError:  # gone already, or a read-only cache
        return False
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
