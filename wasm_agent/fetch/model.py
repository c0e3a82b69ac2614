"""What a fetch is asked for and what it returns."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass

WASM_MAGIC = b"\x00asm"

# (bytes received so far, total bytes if known)
Progress = Callable[[int, int | None], None]


@dataclass(frozen=True)
class FetchRequest:
    """One remote module to fetch.

    ``sha256`` is the expected checksum in lowercase hex (for OCI, the manifest digest);
    ``pull_secret`` is raw ``.dockerconfigjson`` bytes (OCI only; ``b""`` means the config named
    a secret that is empty, an error); ``timeout`` bounds the whole fetch in seconds.
    """

    url: str
    sha256: str | None = None
    pull_secret: bytes | None = None
    timeout: float | None = None

    def __repr__(self) -> str:  # never print the pull secret
        secret = "<redacted>" if self.pull_secret is not None else None
        return (
            f"FetchRequest(url={self.url!r}, sha256={self.sha256!r}, "
            f"pull_secret={secret}, timeout={self.timeout!r})"
        )


@dataclass(frozen=True)
class FetchedModule:
    """A fetched Wasm binary (after unboxing) and the digests that identify it.

    ``checksum`` is what a configured sha256 is matched against: the sha256 of ``data`` for
    HTTP and file URLs, the manifest digest (hex) for OCI images. ``verified_keys`` lists the
    fingerprints of the verify-policy keys that verified its cosign signature (OCI only).
    """

    url: str
    data: bytes
    sha256: str
    checksum: str
    oci_digest: str | None = None
    verified_keys: tuple[str, ...] = ()

    @classmethod
    def from_bytes(cls, url: str, data: bytes) -> FetchedModule:
        digest = hashlib.sha256(data).hexdigest()
        return cls(url=url, data=data, sha256=digest, checksum=digest)


def normalize_sha256(value: str | None) -> str | None:
    """Lowercase hex, without a ``sha256:`` prefix; ``None``, ``""`` and ``"nil"`` mean none."""
    if value is None:
        return None
    value = value.strip().lower().removeprefix("sha256:")
    return None if value in ("", "nil") else value
