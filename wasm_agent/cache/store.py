"""Writing module files: temp file in the same directory, fsync, atomic rename.

A download in progress lives in ``modules/.tmp-<random>.part`` and holds an exclusive flock on
it for its whole life, so a temp file nobody holds belongs to a crashed writer and can go.
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
from wasm_agent.cache.layout import MODULE_MODE, TEMP_PREFIX, CacheLayout
from wasm_agent.fetch.checks import CACHE_CONFIG_NAME

log = logging.getLogger(__name__)


@dataclass
class TempModule:
    """A fully written, fsynced temp file, locked by this process until committed/discarded."""

    path: Path
    fd: int


def write_temp(layout: CacheLayout, data: bytes, url: str) -> TempModule:
    """Write ``data`` to a new temp file in ``modules/`` and fsync it."""
    path = layout.modules / f"{TEMP_PREFIX}{os.urandom(8).hex()}.part"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, MODULE_MODE)
    except OSError as error:
        raise CacheWriteError(url, f"cannot write to {layout.modules}: {error.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # a fresh file: never contended
        os.fchmod(fd, MODULE_MODE)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except OSError as error:
        _remove(path, fd)
        raise CacheWriteError(url, f"cannot write to {layout.modules}: {error.strerror}") from None
    return TempModule(path, fd)


def commit(temp: TempModule, final: Path, url: str) -> Path:
    """Atomically rename the checked temp file to its content-addressed name."""
    try:
        os.rename(temp.path, final)
        dir_fd = os.open(final.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as error:
        discard(temp)
        raise CacheWriteError(url, f"cannot store {final}: {error.strerror}") from None
    os.close(temp.fd)
    temp.fd = -1
    return final


def discard(temp: TempModule) -> None:
    """Remove a temp file that will not be committed (failed a check, or an error)."""
    if temp.fd >= 0:
        _remove(temp.path, temp.fd)
        temp.fd = -1


def _remove(path: Path, fd: int) -> None:
    try:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    finally:
        os.close(fd)


def clean_stale_temps(layout: CacheLayout) -> list[Path]:
    """Delete temp files whose writer is gone (nobody holds their flock)."""
    removed: list[Path] = []
    try:
        names = [n for n in os.listdir(layout.modules) if n.startswith(TEMP_PREFIX)]
    except FileNotFoundError:
        return removed
    for name in names:
        path = layout.modules / name
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:  # gone, or a symlink (never followed; never read as a module either)
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)  # a live download
            continue
        try:
            _remove(path, fd)
        except OSError:  # read-only cache directory: leave it, it is never read anyway
            continue
        removed.append(path)
        log.info("removed an abandoned partial download", extra={"path": str(path)})
    return removed


def touch(path: Path) -> bool:
    """Mark a module as used now (its mtime is its last-use time); False if it is gone."""
    try:
        os.utime(path)
    except FileNotFoundError:
        return False
    except OSError as error:  # read-only cache: still usable, just not refreshed
        log.debug(
            "cannot refresh a module's last use", extra={"path": str(path), "error": error.strerror}
        )
    return True


def compiled_dir(layout: CacheLayout) -> Path | None:
    """``compiled/`` for the compile check, after removing a link or FIFO planted under the
    names it reads and replaces (its wasmtime cache config); None if one cannot be removed."""
    for name in (CACHE_CONFIG_NAME, f".{CACHE_CONFIG_NAME}.{os.getpid()}"):
        path = layout.compiled / name
        try:
            if stat.S_ISREG(os.lstat(path).st_mode):
                continue
            log.warning("removing a planted non-file from the cache", extra={"path": str(path)})
            os.unlink(path)
        except FileNotFoundError:
            continue
        except OSError:  # a directory, or not ours to remove: compile without the artifact cache
            return None
    return layout.compiled
