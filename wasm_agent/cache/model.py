"""What the cache is asked for and what it returns."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from wasm_agent.cache.policy import PullPolicy


@dataclass(frozen=True)
class ModuleRequest:
    """What a config (or a prefetch line) asks for.

    ``resource_name`` identifies the WasmPlugin/ECDS resource whose ``resource_version`` the
    ``Always`` policy watches (Istio keeps one version per resource and URL).
    """

    url: str
    sha256: str | None = None
    pull_policy: PullPolicy = PullPolicy.UNSPECIFIED
    resource_version: str = ""
    pull_secret: bytes | None = None
    timeout: float | None = None
    resource_name: str = ""

    def __repr__(self) -> str:  # never print the pull secret
        secret = "<redacted>" if self.pull_secret is not None else None
        return (
            f"ModuleRequest(url={self.url!r}, sha256={self.sha256!r}, "
            f"pull_policy={self.pull_policy.name}, resource_name={self.resource_name!r}, "
            f"resource_version={self.resource_version!r}, pull_secret={secret}, "
            f"timeout={self.timeout!r})"
        )


@dataclass(frozen=True)
class CachedModule:
    """A module file ready for Envoy's ``local.filename``."""

    path: Path
    sha256: str
    url: str
    size: int
    hit: bool  # served from the cache without a download by this call
    checksum: str = ""  # what the URL is pinned to: the sha256, or an OCI manifest digest's hex
    oci_digest: str | None = None  # "sha256:<checksum>" when that differs from the file's sha256


@dataclass(frozen=True)
class CacheEntry:
    """One module file, for ``wasm-agent cache ls``."""

    sha256: str
    path: Path
    size: int
    last_used: float  # file mtime, updated on every use
    in_use: bool  # held by a forwarded config in some process
    urls: tuple[str, ...]  # URLs last seen serving it

    @property
    def url(self) -> str:
        return self.urls[0] if self.urls else ""
