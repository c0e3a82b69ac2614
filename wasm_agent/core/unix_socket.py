"""Claiming a Unix socket path before binding it, without deleting what is not ours.

``proxy --listen unix:PATH``, ``node --csi-endpoint unix:PATH`` and the node's per-pod
``node.sock`` used to unlink whatever was at the path ("a stale socket from an earlier run"):
a regular file was deleted, and a second process silently took a live socket from the first.
:func:`claim_socket_path` removes only a stale socket:

- nothing at the path: nothing to do;
- not a socket (a file, a directory, a symlink, a FIFO): :class:`~wasm_agent.core.errors.UsageError`
  naming the flag and the path (the CLI exits 2); nothing is removed;
- a socket that accepts ``connect()``: :class:`SocketInUse` (the CLI exits 1); nothing is removed;
- a socket that refuses the connection (``ECONNREFUSED``: nobody listens): removed.

The check and the bind are two steps: a process binding the same path between them can still
lose its socket. Two agents racing for one path within microseconds is not a case we handle.
"""

from __future__ import annotations

import errno
import os
import socket
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from wasm_agent.core.errors import UsageError, WasmAgentError

MAX_PATH = 100  # leave room below sun_path's 108 bytes
_BUSY = frozenset({errno.EAGAIN, errno.EWOULDBLOCK, errno.EINPROGRESS})


class SocketInUse(WasmAgentError):
    """A live socket is at the path: another process listens there (exit 1, not a usage error)."""


@contextmanager
def short_path(path: Path) -> Iterator[str]:
    """A path naming the same socket that fits in ``sun_path``; valid inside the block.

    Paths longer than :data:`MAX_PATH` bytes (kubelet's pod volume paths often are) are reached
    through ``/proc/self/fd/<directory fd>/<name>``.
    """
    text = str(path)
    if len(text.encode()) <= MAX_PATH:
        yield text
        return
    fd = os.open(path.parent, os.O_PATH | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{fd}/{path.name}"
    finally:
        os.close(fd)


def _accepts(path: Path) -> bool:
    """True if something listens on the socket at ``path``; False if it refuses (stale)."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.setblocking(False)  # a full backlog answers EAGAIN at once: a listener, so in use
    try:
        with short_path(path) as name:
            probe.connect(name)
    except ConnectionRefusedError:
        return False
    except OSError as error:
        if error.errno in _BUSY:
            return True
        raise
    finally:
        probe.close()
    return True


def claim_socket_path(path: Path, flag: str) -> None:
    """Make ``path`` free for a new socket, removing only a stale socket (see the module doc).

    ``flag`` names the setting in messages (``--listen unix:/run/x.sock``). Raises
    :class:`UsageError` when something other than a socket is there or the path cannot be
    inspected, and :class:`SocketInUse` when a process accepts connections on it.
    """
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    except OSError as error:
        raise UsageError(f"{flag}: cannot inspect {path}: {error.strerror}") from None
    if not stat.S_ISSOCK(mode):
        raise UsageError(
            f"{flag}: {path} exists and is not a socket ({_kind(mode)}); not removing it"
        )
    try:
        live = _accepts(path)
    except OSError as error:
        raise UsageError(f"{flag}: cannot check the socket {path}: {error.strerror}") from None
    if live:
        raise SocketInUse(f"{flag}: {path} is in use by another process (it accepts connections)")
    try:
        path.unlink()
    except FileNotFoundError:
        pass  # another process removed it meanwhile
    except OSError as error:
        reason = error.strerror
        raise UsageError(f"{flag}: cannot remove the stale socket {path}: {reason}") from None


def _kind(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISREG(mode):
        return "a regular file"
    return "a special file"
