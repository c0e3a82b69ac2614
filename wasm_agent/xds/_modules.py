"""The cache types the xDS conversion uses, imported in this one place.

``wasm_agent.cache`` owns :class:`ModuleRequest`, :class:`CachedModule` and :class:`PullPolicy`.
Until that package exports them, identical definitions (per ``docs/design.md``) stand in.
"""

from __future__ import annotations

try:
    from wasm_agent.cache import CachedModule, ModuleRequest, PullPolicy
except ImportError:  # wasm_agent.cache has not landed yet
    import enum
    from dataclasses import dataclass
    from pathlib import Path

    class PullPolicy(enum.Enum):  # type: ignore[no-redef]
        """When a cached module is re-pulled (Istio's WasmPlugin imagePullPolicy)."""

        UNSPECIFIED = "UNSPECIFIED_POLICY"
        IF_NOT_PRESENT = "IfNotPresent"
        ALWAYS = "Always"

    @dataclass(frozen=True)
    class ModuleRequest:  # type: ignore[no-redef]
        """What a config asks for; ``pull_secret`` is never shown."""

        url: str
        sha256: str | None = None
        pull_policy: PullPolicy = PullPolicy.UNSPECIFIED
        resource_version: str = ""
        pull_secret: bytes | None = None
        timeout: float | None = None

        def __repr__(self) -> str:
            secret = "<redacted>" if self.pull_secret is not None else None
            return (
                f"ModuleRequest(url={self.url!r}, sha256={self.sha256!r}, "
                f"pull_policy={self.pull_policy}, resource_version={self.resource_version!r}, "
                f"pull_secret={secret}, timeout={self.timeout!r})"
            )

    @dataclass(frozen=True)
    class CachedModule:  # type: ignore[no-redef]
        """A module in the cache; ``path`` is what Envoy's ``local.filename`` gets."""

        path: Path
        sha256: str
        url: str
        size: int
        hit: bool


__all__ = ["CachedModule", "ModuleRequest", "PullPolicy"]
