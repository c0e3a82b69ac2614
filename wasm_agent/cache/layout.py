"""Where everything lives inside a cache directory.

```
<dir>/                      0700
  modules/<sha256>.wasm     0444  content-addressed module files (what Envoy loads)
  modules/.tmp-*.part             downloads in progress; never read as modules
  locks/<sha256(key)>.lock  0644  per-module download locks (fcntl.flock)
  compiled/                 0700  wasmtime's compiled-artifact cache (the compile check's)
  host/                     0700  the reference host's compiled modules (``run``, ``check``)
  quarantine/               0700  corrupt module files moved aside by ``cache verify``
  index.json                0444  URL -> checksum records, each with a MAC (see index.py)
  index.key                 0600  the MAC key (see integrity.py)
  index.lock                0644  serializes index writers (empty; never read)
```

Nothing inside the directory may be a symlink or writable by other users (integrity.py); every
file the cache opens by name is opened ``O_NOFOLLOW|O_NONBLOCK`` and must be a regular file.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

from wasm_agent.cache.errors import CacheWriteError

HEX64 = re.compile(r"[0-9a-f]{64}")
MODULE_SUFFIX = ".wasm"
TEMP_PREFIX = ".tmp-"
DIR_MODE = 0o700
FILE_MODE = 0o644  # lock files
MODULE_MODE = 0o444
INDEX_MODE = 0o444


@dataclass(frozen=True)
class CacheLayout:
    """Paths inside one cache directory."""

    root: Path

    @property
    def modules(self) -> Path:
        return self.root / "modules"

    @property
    def locks(self) -> Path:
        return self.root / "locks"

    @property
    def compiled(self) -> Path:
        return self.root / "compiled"

    @property
    def host(self) -> Path:
        return self.root / "host"

    @property
    def quarantine(self) -> Path:
        return self.root / "quarantine"

    @property
    def index(self) -> Path:
        return self.root / "index.json"

    @property
    def index_lock(self) -> Path:
        return self.root / "index.lock"

    def module_path(self, sha256: str) -> Path:
        """``modules/<sha256>.wasm``; refuses anything but 64 lowercase hex digits."""
        if not HEX64.fullmatch(sha256):
            raise ValueError(f"not a sha256 hex digest: {sha256!r}")
        return self.modules / f"{sha256}{MODULE_SUFFIX}"

    def lock_path(self, key: str) -> Path:
        """The download lock file for a module key (a URL or a checksum)."""
        return self.locks / f"{hashlib.sha256(key.encode()).hexdigest()}.lock"

    def module_files(self) -> list[Path]:
        """Every complete module file (temp files excluded)."""
        try:
            names = os.listdir(self.modules)
        except FileNotFoundError:
            return []
        return [
            self.modules / name
            for name in sorted(names)
            if name.endswith(MODULE_SUFFIX) and HEX64.fullmatch(name[: -len(MODULE_SUFFIX)])
        ]

    def ensure(self) -> None:
        """Create the directories (0700) if missing; raise :class:`CacheWriteError` if we cannot."""
        for path in (self.root, self.modules, self.locks, self.compiled):
            try:
                path.mkdir(mode=DIR_MODE, parents=True)
                os.chmod(path, DIR_MODE)  # mkdir's mode is filtered by the umask
            except FileExistsError:
                if not path.is_dir():
                    raise CacheWriteError(
                        str(self.root), f"cache path {path} exists and is not a directory"
                    ) from None
            except OSError as error:
                raise CacheWriteError(
                    str(self.root), f"cannot create cache directory {path}: {error.strerror}"
                ) from None
