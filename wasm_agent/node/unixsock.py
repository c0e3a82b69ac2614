"""Unix socket paths longer than ``sun_path`` allows (108 bytes), bound and reached through
``/proc/self/fd/<directory fd>/<name>``, as kubelet's pod volume paths often are."""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

from wasm_agent.core.errors import WasmAgentError
from wasm_agent.core.unix_socket import MAX_PATH, claim_socket_path, short_path

__all__ = ["MAX_PATH", "bind_unix", "connect_unix", "short_path"]


def bind_unix(path: Path, mode: int = 0o666) -> socket.socket:
    """A listening Unix stream socket at ``path``; only a stale socket there is replaced.

    Anything else at ``path`` (a file, a live socket) raises :class:`FileExistsError`.
    """
    try:
        claim_socket_path(path, "node socket")
    except WasmAgentError as error:
        raise FileExistsError(str(error)) from None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        with short_path(path) as name:
            sock.bind(name)
            if not stat.S_ISSOCK(os.lstat(name).st_mode):  # replaced since: chmod no link target
                raise FileExistsError(f"{path}: replaced by something else while being bound")
            os.chmod(name, mode)
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
