"""Removing expired modules that no process holds (Istio #42154: never a module in use)."""

from __future__ import annotations

import fcntl
import logging
import os
import stat
from pathlib import Path

from wasm_agent.cache.index import Index
from wasm_agent.cache.layout import CacheLayout
from wasm_agent.cache.locks import MODULE_LOCK_OPEN_FLAGS, try_lock
from wasm_agent.cache.store import clean_stale_temps

log = logging.getLogger(__name__)
STALE_INDEX_TEMP = 3600.0


def purge_expired(layout: CacheLayout, index: Index, expiry: float, now: float) -> list[Path]:
    """Delete module files untouched for ``expiry`` seconds and held by nobody.

    Each candidate is re-checked under an exclusive non-blocking flock: a holder's shared
    lock makes it fail (skip), and a use that touched the file meanwhile makes it fresh again.
    """
    removed: list[Path] = []
    for path in layout.module_files():
        try:
            st = path.lstat()
            if not stat.S_ISREG(st.st_mode):  # a link or FIFO: `cache verify` reports it
                log.warning("skipped a module path that is not a file", extra={"path": str(path)})
                continue
            if now - st.st_mtime <= expiry:
                continue
            fd = os.open(path, MODULE_LOCK_OPEN_FLAGS)
        except FileNotFoundError:
            continue
        except OSError as error:  # a symlink (ELOOP) is never followed; `cache verify` reports it
            log.warning("skipped a module path", extra={"path": str(path), "error": error.strerror})
            continue
        try:
            if not try_lock(fd, exclusive=True):
                log.info("kept an expired module still in use", extra={"path": str(path)})
                continue
            current = os.stat(path)
            if current.st_ino != os.fstat(fd).st_ino or now - current.st_mtime <= expiry:
                continue
            os.unlink(path)
            removed.append(path)
            log.info("purged an expired module", extra={"path": str(path)})
        except FileNotFoundError:
            continue
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
    if removed:
        index.update(lambda data: data.forget_modules({p.stem for p in removed}))
    clean_stale_temps(layout)
    _clean_index_temps(layout, now)
    return removed


def _clean_index_temps(layout: CacheLayout, now: float) -> None:
    for path in layout.root.glob(".index-*.tmp"):
        try:
            if now - path.stat().st_mtime > STALE_INDEX_TEMP:
                path.unlink()
        except FileNotFoundError:
            pass
