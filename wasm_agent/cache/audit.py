"""Re-hashing module files: a file whose content no longer matches its name is corrupt.

Module files are named by their sha256 (``modules/<sha256>.wasm``), so checking one needs no
index. A corrupt file is moved to ``<dir>/quarantine/`` (unless asked not to): it is never
served again, the next request for its URL downloads the module afresh, and the bad bytes stay
available for inspection. A process already using the file keeps its open handle. A module
"file" that is a symlink is reported as bad (never followed) and moved aside likewise.

:func:`audit_index` lists the index entries that do not hold: a MAC that does not verify (an
entry this cache's writer never wrote: a hand edit, or a file copied from elsewhere), and an
HTTP/file URL record whose checksum is not its module's sha256.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path

from wasm_agent.cache.index import Index
from wasm_agent.cache.integrity import InsecureCache, check_error, check_path, hash_fd
from wasm_agent.cache.layout import DIR_MODE, CacheLayout

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Verified:
    """The outcome for one module file."""

    path: Path
    sha256: str  # the name: what the content should hash to
    actual: str  # what it hashes to ("" if it vanished or could not be read)
    size: int
    quarantined: Path | None = None
    error: str = ""  # unreadable file

    @property
    def ok(self) -> bool:
        return not self.error and self.actual == self.sha256


def quarantine_dir(layout: CacheLayout) -> Path:
    """``<dir>/quarantine``: corrupt module files moved aside by :func:`verify_modules`."""
    return layout.quarantine


def file_sha256(path: Path) -> str:
    """The sha256 hex of a file's content, read in chunks (never through a symlink: ELOOP)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        return hash_fd(fd)
    finally:
        os.close(fd)


def audit_index(index: Index) -> list[str]:
    """Every index entry that does not hold, as a sentence naming it: an unreadable index, a
    MAC that does not verify, a URL whose checksum is not its module's sha256, an entry naming
    a module file that is not in ``modules/``."""
    data = index.load()
    problems = []
    if data.unreadable:
        problems.append(
            f"{index.layout.index} cannot be read ({data.unreadable}); it is ignored "
            "(treated as empty) and rewritten by the next download"
        )
    problems += [
        f"index entry {entry}: its MAC does not verify (not written by this cache's writer); "
        "it is ignored"
        for entry in data.problems
    ]
    for url, rec in sorted(data.urls.items()):
        if not url.startswith("oci://") and rec.checksum != rec.sha256:
            problems.append(
                f"index entry urls[{url}]: checksum {rec.checksum} names module {rec.sha256}"
            )
    named = [(f"urls[{u}]", r.sha256) for u, r in sorted(data.urls.items())]
    named += [(f"digests[{c}]", s) for c, s in sorted(data.digests.items())]
    for entry, sha in named:
        if not _present(index.layout, sha):
            problems.append(f"index entry {entry} names module {sha}, which is not in modules/")
    return problems + audit_lock_files(index.layout)


def audit_lock_files(layout: CacheLayout) -> list[str]:
    """Every lock file that is not a regular file (a planted symlink, FIFO or directory), as a
    sentence: the next download that needs it replaces it (cache/locks.py, ``open_lock_file``)."""
    paths = [layout.index_lock]
    with contextlib.suppress(OSError):
        paths += [layout.locks / name for name in sorted(os.listdir(layout.locks))]
    problems = []
    for path in paths:
        try:
            mode = os.lstat(path).st_mode
        except OSError:
            continue
        if stat.S_ISDIR(mode) and _has_entries(path):
            problems.append(
                f"{path} is a directory with entries, not a lock file (planted?); downloads "
                "that need this lock fail until it is removed by hand"
            )
        elif not stat.S_ISREG(mode):
            problems.append(
                f"{path} is not a regular file (planted?); it is never followed, and the next "
                "download that needs this lock replaces it"
            )
    return problems


def _has_entries(directory: Path) -> bool:
    try:
        return bool(os.listdir(directory))
    except OSError:
        return True


def _present(layout: CacheLayout, sha256: str) -> bool:
    """Whether ``modules/<sha256>.wasm`` exists (as anything: a bad file is verify's to report)."""
    try:
        os.lstat(layout.module_path(sha256))
    except (OSError, ValueError):
        return False
    return True


def verify_modules(
    layout: CacheLayout, quarantine: bool = True, max_bytes: int | None = None
) -> list[Verified]:
    """Re-hash every module file; move corrupt ones aside when ``quarantine`` is true. A file
    larger than ``max_bytes`` (the largest module accepted) is reported and moved unread."""
    results = []
    for path in layout.module_files():
        name = path.stem
        try:
            size = path.lstat().st_size
            if max_bytes is not None and size > max_bytes:
                moved = _move_aside(layout, path) if quarantine else None
                why = f"is larger ({size} bytes) than any module accepted ({max_bytes} bytes)"
                results.append(Verified(path, name, "", size, quarantined=moved, error=why))
                continue
            actual = file_sha256(path)
        except FileNotFoundError:
            continue  # purged meanwhile
        except OSError as error:
            why = "is a symlink" if path.is_symlink() else error.strerror or str(error)
            moved = _move_aside(layout, path) if quarantine and path.is_symlink() else None
            results.append(Verified(path, name, "", 0, quarantined=moved, error=why))
            continue
        moved = None
        if actual != name:
            log.warning(
                "corrupt module file",
                extra={"path": str(path), "expected": name, "actual": actual},
            )
            if quarantine:
                moved = _move_aside(layout, path)
        results.append(Verified(path, name, actual, size, quarantined=moved))
    return results


def _move_aside(layout: CacheLayout, path: Path) -> Path | None:
    """:func:`_quarantine`, or None (logged) when the quarantine is unsafe or the move fails."""
    try:
        return _quarantine(layout, path)
    except (InsecureCache, OSError) as error:
        log.warning(
            "cannot move a corrupt module aside",
            extra={"path": str(path), "error": getattr(error, "cause", None) or str(error)},
        )
        return None


def _quarantine(layout: CacheLayout, path: Path) -> Path:
    """Rename ``path`` into the quarantine directory (same filesystem: atomic). The directory
    is opened ``O_NOFOLLOW`` and must be a real directory of ours that no one else may write
    (:class:`InsecureCache` otherwise), and the rename goes through that descriptor, so a
    ``quarantine`` link never moves a file out of the cache."""
    target_dir = quarantine_dir(layout)
    with contextlib.suppress(FileExistsError):
        os.mkdir(target_dir, DIR_MODE)
    check_path(layout, target_dir, directory=True)  # a link, a file, others' or writable
    try:
        dir_fd = os.open(target_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as error:  # swapped for a link after the check: ELOOP / ENOTDIR
        raise check_error(layout, target_dir, "is not a directory") from error
    name = f"{path.name}.{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}"
    try:
        os.rename(path, name, dst_dir_fd=dir_fd)
    finally:
        os.close(dir_fd)
    target = target_dir / name
    log.warning("moved a corrupt module aside", extra={"path": str(path), "to": str(target)})
    return target
