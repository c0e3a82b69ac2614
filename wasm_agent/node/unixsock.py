"""Unix socket paths longer than ``sun_path`` allows (108 bytes), bound and reached through
``/proc/self/fd/<directory fd>/<name>``, as kubelet's pod volume paths often are."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

MAX_PATH = 100  # leave room below sun_path's 108 bytes


@contextmanager
def short_path(path: Path) -> Iterator[str]:
    """A path naming the same socket that fits in ``sun_path``; valid inside the block."""
    text = str(path)
    if len(text.encode()) <= MAX_PATH:
        yield text
        return
    fd = os.open(path.parent, os.O_PATH | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{fd}/{path.name}"
    finally:
        os.close(fd)


def bind_unix(path: Path, mode: int = 0o666) -> socket.socket:
    """A listening Unix stream socket at ``path`` (a stale file there is replaced)."""
    path.unlink(missing_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        with short_path(path) as name:
            sock.bind(name)
        os.chmod(path, mode)
        sock.listen(64)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def connect_unix(path: Path, timeout: float) -> socket.socket:
    """A connected (blocking, ``timeout``) Unix stream socket to ``path``."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        with short_path(path) as name:
            sock.connect(name)
    except BaseException:
        sock.close()
        raise
    return sock
