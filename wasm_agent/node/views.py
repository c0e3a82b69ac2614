"""A pod's view: ``<target>/modules/`` (read-only) and ``<target>/node.sock``.

With mounts (the node service runs as root): the view is a backing directory the node owns,
``<state>/views/<key>/``, bind-mounted read-only (nosuid, nodev, noexec) at the target path;
each module is a read-only bind mount of the cache file onto a placeholder. Without mounts:
the view is built at the target path itself, modules hardlinked (same filesystem) or copied.
Either way files are 0444 and directories 0555; only root (the node service) can change them.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from wasm_agent.node import MODULES_DIR, SOCKET_NAME
from wasm_agent.node.mounts import (
    MountError,
    bind_read_only,
    is_mount_point,
    mount_points,
    unmount_all,
)

log = logging.getLogger(__name__)
DIR_MODE = 0o555
FILE_MODE = 0o444


class ViewError(OSError):
    """A view could not be built or placed into."""


class View:
    """The paths of one pod's view."""

    def __init__(self, target: Path, backing: Path, use_mounts: bool) -> None:
        self.target = target
        self.use_mounts = use_mounts
        self.root = backing if use_mounts else target  # where the node writes

    @property
    def socket_path(self) -> Path:
        return self.root / SOCKET_NAME

    def module_name(self, sha256: str) -> str:
        """The module's path relative to the view (what a pod is answered)."""
        return f"{MODULES_DIR}/{sha256}.wasm"

    def create(self) -> None:
        """Build the view (idempotent: an existing, complete view is left as it is)."""
        modules = self.root / MODULES_DIR
        modules.mkdir(parents=True, exist_ok=True)
        os.chmod(modules, DIR_MODE)
        os.chmod(self.root, DIR_MODE)
        if not self.use_mounts:
            return
        self.target.mkdir(parents=True, exist_ok=True)
        if not is_mount_point(self.target):
            try:
                bind_read_only(self.root, self.target)
            except MountError as error:
                raise ViewError(error.errno, f"cannot mount the view: {error.strerror}") from None

    def place(self, sha256: str, source: Path) -> str:
        """Put the cache file ``source`` into the view read-only; its view-relative path."""
        name = self.module_name(sha256)
        local = self.root / name
        seen = self.target / name
        if self.use_mounts:
            if not local.exists():
                local.touch(mode=FILE_MODE)
            if seen not in mount_points(seen):
                # the mount shows the cache file's own inode: make it 0444 there (the node
                # service owns the cache; content-addressed files are never rewritten)
                os.chmod(source, FILE_MODE)
                try:
                    bind_read_only(source, seen)
                except MountError as error:
                    raise ViewError(error.errno, f"cannot mount {name}: {error.strerror}") from None
            return name
        if not local.exists():
            temp = local.with_name(f".{local.name}.tmp")
            temp.unlink(missing_ok=True)
            try:
                os.link(source, temp)
            except OSError:
                shutil.copyfile(source, temp)
            os.chmod(temp, FILE_MODE)
            os.replace(temp, local)
        return name

    def has(self, sha256: str) -> bool:
        """Is the module placed and visible at the target path?"""
        seen = self.target / self.module_name(sha256)
        if self.use_mounts:
            return seen in mount_points(seen)
        return seen.is_file()

    def remove(self, ours: bool = True) -> None:
        """Unmount and delete the view and the target directory (idempotent).

        ``ours=False`` (a volume without a record): detach mounts, delete the backing
        directory, and remove the target only if it is then an empty directory, so an
        unpublish call can never delete files the node service did not create.
        """
        for _ in range(8):  # stacked mounts at one point need one detach each
            if not unmount_all(self.target):
                break
        if self.use_mounts:
            _remove_tree(self.root)
        if not self.target.is_dir() or is_mount_point(self.target):
            return
        if ours and not self.use_mounts:
            _remove_tree(self.target)
            return
        try:
            self.target.rmdir()
        except OSError as error:
            log.warning(
                "left a non-empty target path in place",
                extra={"target_path": str(self.target), "error": error.strerror},
            )


def _remove_tree(path: Path) -> None:
    if not path.exists():
        return
    for directory, _dirs, _files in os.walk(path):
        os.chmod(directory, 0o700)
    shutil.rmtree(path, ignore_errors=True)
