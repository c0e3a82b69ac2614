"""Bind mounts through libc (no ``mount`` process per call), and the mount table."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from pathlib import Path

MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_BIND = 4096
MNT_DETACH = 2

_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)


class MountError(OSError):
    """A mount or unmount call failed."""


def _call(name: str, *args: object) -> None:
    result = getattr(_libc, name)(*args)
    if result != 0:
        errno = ctypes.get_errno()
        raise MountError(
            errno, f"{name} {args[1] if name == 'mount' else args[0]!r}: {os.strerror(errno)}"
        )


def bind_read_only(source: Path, target: Path, *, noexec: bool = True) -> None:
    """Bind ``source`` onto ``target`` (which must exist), then make that mount read-only."""
    src, dst = os.fsencode(source), os.fsencode(target)
    _call("mount", src, dst, None, MS_BIND, None)
    flags = MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV | (MS_NOEXEC if noexec else 0)
    try:
        _call("mount", src, dst, None, flags, None)
    except MountError:
        unmount(target)
        raise


def unmount(target: Path) -> None:
    """Detach the mount at ``target`` (lazily: open files keep working)."""
    _call("umount2", os.fsencode(target), MNT_DETACH)


def _unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as ``\\ooo``."""
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and i + 3 < len(field) + 1 and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def mount_points(under: Path | None = None) -> list[Path]:
    """Mount points of this mount namespace (optionally only ``under`` and below), in order."""
    prefix = str(under).rstrip("/") if under else None
    found: list[Path] = []
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as table:
        for line in table:
            point = _unescape(line.split(" ", 5)[4])
            if prefix is None or point == prefix or point.startswith(prefix + "/"):
                found.append(Path(point))
    return found


def is_mount_point(path: Path) -> bool:
    """Is ``path`` itself a mount point?"""
    return path in mount_points(path)


def unmount_all(under: Path) -> int:
    """Detach every mount at or below ``under``, deepest first; how many were detached."""
    points = sorted(set(mount_points(under)), key=lambda p: len(p.parts), reverse=True)
    for point in points:
        try:
            unmount(point)
        except MountError:
            continue
    return len(points)
