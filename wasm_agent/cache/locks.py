"""Cross-process file locks (``fcntl.flock``) that never block the event loop.

flock locks belong to an open file description, so they conflict between processes *and*
between two opens in one process, and vanish when the holder dies (even by ``kill -9``).
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import stat
import time
from pathlib import Path

from wasm_agent.cache.integrity import NotRegularFile, open_regular
from wasm_agent.cache.layout import FILE_MODE
from wasm_agent.core.errors import WasmAgentError

# Opening a module file to lock it must neither follow a link nor wait on a FIFO planted
# under its name (a writer of the cache directory is not trusted with the agent's liveness).
MODULE_LOCK_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


log = logging.getLogger(__name__)


class LockTimeout(WasmAgentError):
    """A lock was still held by someone else when the wait ran out."""


def try_lock(fd: int, exclusive: bool = True) -> bool:
    """Take a flock on ``fd`` without waiting; False if another holder conflicts."""
    try:
        fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def open_lock_file(path: Path) -> int:
    """Open (create) the lock file ``path`` for flock. A lock file holds nothing, so something
    else planted under its name (a symlink, a FIFO, an empty directory) is removed, never
    followed, and the lock file created in its place: a writer of the cache directory cannot
    deny a module's downloads forever by planting one. Raises ``OSError`` if that fails."""
    try:
        return open_regular(path, os.O_RDWR | os.O_CREAT, FILE_MODE)
    except NotRegularFile:
        pass
    except OSError as error:
        # ELOOP: a symlink; EISDIR: a directory; ENXIO/ENODEV/EOPNOTSUPP: a socket or device
        if error.errno not in (errno.ELOOP, errno.EISDIR, errno.ENXIO, errno.ENODEV,
                               errno.EOPNOTSUPP):  # fmt: skip
            raise
    log.warning("replacing a planted lock file (not a regular file)", extra={"path": str(path)})
    try:
        mode = os.lstat(path).st_mode
        if stat.S_ISDIR(mode):
            os.rmdir(path)  # only if empty; otherwise the OSError names it
        elif not stat.S_ISREG(mode):  # another process may have replaced it already: keep that
            os.unlink(path)  # a symlink itself, a FIFO, a socket, a device node
    except FileNotFoundError:
        pass
    return open_regular(path, os.O_RDWR | os.O_CREAT, FILE_MODE)


class FileLock:
    """An exclusive lock on ``path``; :meth:`acquire` polls with short sleeps while another
    holder has it. Raises :class:`LockTimeout`, or ``OSError`` if the file cannot be opened."""

    def __init__(self, path: Path, timeout: float, poll: float = 0.01) -> None:
        self.path = path
        self.timeout = timeout
        self.poll = poll
        self.fd = -1
        self.waited = False

    async def acquire(self) -> None:
        import asyncio  # noqa: PLC0415 - keeps warm `prefetch` < 100 ms (docs/design.md, Layers)

        fd = open_lock_file(self.path)  # a planted link or FIFO is replaced, never followed
        deadline = time.monotonic() + self.timeout
        delay = self.poll
        while not try_lock(fd):
            self.waited = True
            if time.monotonic() >= deadline:
                os.close(fd)
                raise LockTimeout(f"lock {self.path} still held after {self.timeout:g}s")
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, 0.1)
        self.fd = fd

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # closing releases the flock
            self.fd = -1


def hold_file(path: Path, attempts: int = 50) -> int | None:
    """Open ``path`` and keep a shared flock on it (marks it in use); None if it is gone.

    A purger holds the exclusive lock only for the instant it re-checks and unlinks, so a few
    short retries suffice; the inode check catches a file unlinked while we waited.
    """
    for _ in range(attempts):
        try:
            fd = os.open(path, MODULE_LOCK_OPEN_FLAGS)
        except (FileNotFoundError, IsADirectoryError):
            return None
        except OSError as error:  # ELOOP: a symlink, never followed (integrity.py)
            if error.errno == errno.ELOOP:
                return None
            raise
        if try_lock(fd, exclusive=False):
            try:
                same = os.lstat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                return fd
            os.close(fd)
            return None
        os.close(fd)
        time.sleep(0.002)
    return None


def in_use(path: Path) -> bool:
    """True if some process (this one included) holds ``path`` with :func:`hold_file`."""
    try:
        fd = os.open(path, MODULE_LOCK_OPEN_FLAGS)
    except (FileNotFoundError, IsADirectoryError):
        return False
    except OSError as error:  # ELOOP: a symlink is no module anyone holds
        if error.errno == errno.ELOOP:
            return False
        raise
    try:
        return not try_lock(fd, exclusive=True)
    finally:
        os.close(fd)
