"""Where the node itself fetched each cached module from: the rule that keeps a
content-addressed node cache from handing one pod's module to another (docs/node.md).

The node cache stores a module once, by sha256, whatever URL it came from. A pod's request that
names that sha256 (pinned, or through an ``oci://…@sha256:`` digest) would be a cache hit from
*any* URL, so a pod could get a module it has no access to by naming a URL it cannot read.
The node therefore places a cached module for a pod only if the node has itself fetched that
module from the pod's own origin, with the pod's own credentials:

- ``http(s)://``: the same URL, exactly (user-info and query included: the URL is the
  credential). A URL is remembered as a hash, never as text.
- ``oci://``: the same repository (``registry/name``); every request of a pod for it also
  passes the registry's access check with the pod's pull secret (:mod:`access`).

Otherwise the node fetches the module from the pod's reference first (a confirming download) and
places it only if that answers the same sha256. The remembered origins are a JSON file in the
node's state directory, written atomically, so they survive a restart.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path

from wasm_agent.fetch.reference import InvalidReference, parse_reference

log = logging.getLogger(__name__)

MAX_ORIGINS = 256  # remembered per module; the oldest goes first


def origin_key(url: str) -> str | None:
    """The origin a normalized module URL names, or None (a scheme pods may not use)."""
    if url.startswith(("http://", "https://")):
        return "http:" + hashlib.sha256(url.encode()).hexdigest()
    if url.startswith("oci://"):
        try:
            return "oci:" + parse_reference(url).name
        except InvalidReference:
            return None
    return None


class Origins:
    """sha256 of a cached module -> the origins the node fetched it from (see the module doc)."""

    def __init__(self, path: Path, present: Callable[[str], bool]) -> None:
        self.path = path
        self._present = present  # is this module still in the cache?
        self._by_module: dict[str, list[str]] = self._load()

    def _load(self) -> dict[str, list[str]]:
        try:
            raw = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as error:  # every module is then confirmed again
            log.warning(
                "ignoring an unreadable origins file",
                extra={"path": str(self.path), "error": str(error)},
            )
            return {}
        if not isinstance(raw, dict):
            return {}
        return {
            str(sha): [str(key) for key in keys]
            for sha, keys in raw.items()
            if isinstance(keys, list)
        }

    def known(self, sha256: str, url: str) -> bool:
        """Did the node fetch module ``sha256`` from the origin ``url`` names?"""
        key = origin_key(url)
        return key is not None and key in self._by_module.get(sha256, ())

    def add(self, sha256: str, url: str) -> None:
        """Remember that the node fetched ``sha256`` from ``url``'s origin (written at once)."""
        key = origin_key(url)
        if key is None or key in self._by_module.get(sha256, ()):
            return
        keys = self._by_module.setdefault(sha256, [])
        keys.append(key)
        del keys[:-MAX_ORIGINS]
        for sha in [s for s in self._by_module if s != sha256 and not self._present(s)]:
            del self._by_module[sha]  # modules that left the cache are fetched (and added) again
        self._save()

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        temp = self.path.with_suffix(".tmp")
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump(self._by_module, out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, self.path)
