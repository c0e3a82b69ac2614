"""Published volumes on disk: one JSON record per volume, written atomically, so a restarted
node service knows every view it serves and the modules each one holds."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)


@dataclass
class PodIdentity:
    """Who a view belongs to (kubelet's ``csi.storage.k8s.io/*`` volume context)."""

    name: str = ""
    namespace: str = ""
    uid: str = ""
    service_account: str = ""

    def label(self) -> str:
        return f"{self.namespace}/{self.name}" if self.name else self.uid


@dataclass
class VolumeRecord:
    """One published ephemeral volume and what was placed in it."""

    volume_id: str
    target_path: str
    pod: PodIdentity
    read_only: bool = True
    modules: dict[str, str] = field(default_factory=dict)  # sha256 -> URL it was asked as

    @property
    def key(self) -> str:
        """A file-name-safe, fixed-length name for this volume."""
        return hashlib.sha256(self.volume_id.encode()).hexdigest()[:32]


class VolumeStore:
    """The records under ``<state dir>/volumes/``."""

    def __init__(self, state_dir: Path) -> None:
        self.directory = state_dir / "volumes"

    def ensure(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)

    def _path(self, record: VolumeRecord) -> Path:
        return self.directory / f"{record.key}.json"

    def save(self, record: VolumeRecord) -> None:
        """Write ``record`` atomically (temp file, fsync, rename)."""
        self.ensure()
        path = self._path(record)
        temp = path.with_suffix(".tmp")
        with open(temp, "w", encoding="utf-8") as out:
            json.dump(asdict(record), out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, path)

    def delete(self, record: VolumeRecord) -> None:
        self._path(record).unlink(missing_ok=True)

    def load_all(self) -> list[VolumeRecord]:
        """Every readable record; a corrupt one is logged and skipped."""
        if not self.directory.is_dir():
            return []
        records = []
        for path in sorted(self.directory.glob("*.json")):
            try:
                raw = json.loads(path.read_text(encoding="utf-8"))
                raw["pod"] = PodIdentity(**raw.get("pod", {}))
                records.append(VolumeRecord(**raw))
            except (OSError, ValueError, TypeError) as error:
                log.warning(
                    "skipping an unreadable volume record",
                    extra={"path": str(path), "error": str(error)},
                )
        return records
