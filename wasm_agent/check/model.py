"""The result types of ``wasm-agent check``: one :class:`Check` per line of the report."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any


class Status(enum.StrEnum):
    """Outcome of one check; only ``fail`` makes the module (and the exit status) fail."""

    PASS = "pass"
    FAIL = "fail"
    WARN = "warn"
    SKIP = "skip"


@dataclass
class Check:
    """One reported check.

    ``section`` is ``input``, ``structure``, ``compat``, ``load`` or ``spec``; ``name`` is unique
    within the section (a spec case's name); ``detail_lines`` are extra human lines (a diff,
    the imports Envoy lacks); ``details`` is machine data for JSON; ``location`` is
    ``file:line`` when the check comes from a file (spec cases, manifests).
    """

    section: str
    name: str
    status: Status
    message: str
    details: dict[str, Any] = field(default_factory=dict)
    detail_lines: list[str] = field(default_factory=list)
    duration_ms: float | None = None
    location: str | None = None

    @property
    def id(self) -> str:
        return f"{self.section}.{self.name}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "section": self.section,
            "name": self.name,
            "status": self.status.value,
            "message": self.message,
            "detail_lines": list(self.detail_lines),
            "details": self.details,
            "duration_ms": None if self.duration_ms is None else round(self.duration_ms, 3),
            "location": self.location,
        }


@dataclass
class ModuleReport:
    """Everything checked about one module."""

    module: str  # as given on the command line or in the manifest
    url: str | None = None  # normalized URL for fetched modules, None for local paths
    plugin: str | None = None  # WasmPlugin name when it came from a manifest
    origin: str | None = None  # manifest file:line
    size: int | None = None
    sha256: str | None = None
    oci_digest: str | None = None
    abi_version: str | None = None
    kind: str | None = None  # http, network, both, none
    checks: list[Check] = field(default_factory=list)
    duration_ms: float = 0.0

    @property
    def passed(self) -> bool:
        return all(c.status is not Status.FAIL for c in self.checks)

    def add(self, check: Check) -> Check:
        self.checks.append(check)
        return check

    def to_dict(self) -> dict[str, Any]:
        return {
            "module": self.module,
            "url": self.url,
            "plugin": self.plugin,
            "origin": self.origin,
            "passed": self.passed,
            "size": self.size,
            "sha256": self.sha256,
            "oci_digest": self.oci_digest,
            "abi_version": self.abi_version,
            "kind": self.kind,
            "duration_ms": round(self.duration_ms, 3),
            "checks": [c.to_dict() for c in self.checks],
        }
