"""OCI/Docker manifests and layers: which manifest and layer hold the Wasm, and extraction.

Pure functions (no I/O). Formats, in Istio's order: (1) Docker manifest v2 whose last layer is
a Docker rootfs tar.gz holding ``plugin.wasm``; (2) OCI manifest whose last layer is an OCI
tar+gzip layer holding ``plugin.wasm``; (3) a Wasm artifact with a raw Wasm layer.
"""

from __future__ import annotations

import gzip
import io
import json
import posixpath
import re
import tarfile
import zlib
from dataclasses import dataclass
from typing import Any

from wasm_agent.core.errors import WasmAgentError

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
WASM_LAYERS = (
    "application/vnd.module.wasm.content.layer.v1+wasm",
    "application/vnd.wasm.content.layer.v1+wasm",
)
WASM_CONFIG = "application/vnd.module.wasm.config.v1+json"

IMAGE_TYPES = (DOCKER_MANIFEST, OCI_MANIFEST)
INDEX_TYPES = (DOCKER_LIST, OCI_INDEX)
ACCEPT = ", ".join((OCI_MANIFEST, DOCKER_MANIFEST, OCI_INDEX, DOCKER_LIST))

PLUGIN_FILE = "plugin.wasm"
_DIGEST = re.compile(r"sha256:[a-f0-9]{64}")


class LayoutError(WasmAgentError, ValueError):
    """The manifest or layer cannot be used; the message says what was found."""


class ArchiveError(WasmAgentError, ValueError):
    """A layer archive is malformed, a bomb, or uses path tricks or links."""


class TooLarge(WasmAgentError, ValueError):
    """The Wasm binary is larger than the size cap."""


@dataclass(frozen=True)
class Descriptor:
    """A content descriptor: media type, ``sha256:`` digest and size in bytes."""

    media_type: str
    digest: str
    size: int
    platform: dict[str, Any] | None = None

    @classmethod
    def parse(cls, raw: Any, what: str) -> Descriptor:
        if not isinstance(raw, dict):
            raise LayoutError(f"{what} is not an object")
        media_type, digest, size = raw.get("mediaType", ""), raw.get("digest"), raw.get("size")
        if not isinstance(digest, str) or not _DIGEST.fullmatch(digest):
            raise LayoutError(f"{what} has an unsupported or malformed digest {str(digest)[:80]!r}")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise LayoutError(f"{what} has no valid size")
        if not isinstance(media_type, str):
            raise LayoutError(f"{what} has a non-string mediaType")
        platform = raw.get("platform") if isinstance(raw.get("platform"), dict) else None
        return cls(media_type, digest, size, platform)


@dataclass(frozen=True)
class Manifest:
    """A parsed manifest: an image (``layers``) or an index (``manifests``)."""

    media_type: str
    layers: tuple[Descriptor, ...] = ()
    manifests: tuple[Descriptor, ...] = ()
    config_media_type: str = ""

    @property
    def is_index(self) -> bool:
        return self.media_type in INDEX_TYPES


def parse_manifest(body: bytes, content_type: str = "") -> Manifest:
    """Parse manifest bytes; the ``mediaType`` field wins over the Content-Type header."""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise LayoutError("manifest is not valid JSON") from None
    except RecursionError:  # json nests one C stack frame per level
        raise LayoutError("manifest JSON is nested too deeply") from None
    if not isinstance(doc, dict):
        raise LayoutError("manifest is not a JSON object")
    if doc.get("schemaVersion") != 2:
        raise LayoutError(f"unsupported manifest schemaVersion {doc.get('schemaVersion')!r}")
    media_type = doc.get("mediaType") or content_type.split(";", 1)[0].strip()
    if not media_type:  # OCI allows omitting mediaType: tell image from index by shape
        media_type = OCI_INDEX if "manifests" in doc else OCI_MANIFEST
    if media_type in INDEX_TYPES:
        entries = doc.get("manifests")
        if not isinstance(entries, list):
            raise LayoutError("index has no 'manifests' list")
        found = tuple(Descriptor.parse(e, f"index entry {i}") for i, e in enumerate(entries))
        return Manifest(media_type, manifests=found)
    if media_type in IMAGE_TYPES:
        layers = doc.get("layers")
        if not isinstance(layers, list):
            raise LayoutError("manifest has no 'layers' list")
        raw_config = doc.get("config")
        config = raw_config if isinstance(raw_config, dict) else {}
        parsed = tuple(Descriptor.parse(e, f"layer {i}") for i, e in enumerate(layers))
        return Manifest(media_type, layers=parsed, config_media_type=config.get("mediaType", ""))
    raise LayoutError(f"unsupported manifest media type {media_type!r}")


def select_from_index(index: Manifest) -> Descriptor:
    """The index entry to use: linux/amd64, else the only entry, else the only Wasm entry."""
    entries = [e for e in index.manifests if e.media_type in IMAGE_TYPES or not e.media_type]
    for entry in entries:
        platform = entry.platform or {}
        if platform.get("os") == "linux" and platform.get("architecture") == "amd64":
            return entry
    wasm = [e for e in entries if (e.platform or {}).get("architecture") == "wasm"]
    if len(wasm) == 1:
        return wasm[0]
    if len(entries) == 1:
        return entries[0]
    platforms = sorted(
        "{}/{}".format(
            (e.platform or {}).get("os", "?"), (e.platform or {}).get("architecture", "?")
        )
        for e in index.manifests
    )
    raise LayoutError(
        f"index has no linux/amd64 or single Wasm entry (found {len(index.manifests)} "
        f"entries: {', '.join(platforms) or 'none'})"
    )


def _platform(entry: Descriptor) -> str:
    platform = entry.platform or {}
    return f"{platform.get('os', '?')}/{platform.get('architecture', '?')}"


@dataclass(frozen=True)
class WasmLayer:
    """The layer holding the module; ``archive`` when it is a tar.gz with ``plugin.wasm``."""

    descriptor: Descriptor
    archive: bool
    format: str  # "docker", "oci" or "wasm"


def choose_layer(manifest: Manifest) -> WasmLayer:
    """Pick the layer with the module, or raise :class:`LayoutError` naming what was found."""
    layers = manifest.layers
    if not layers:
        raise LayoutError("manifest has no layers")
    last = layers[-1]
    if manifest.media_type == DOCKER_MANIFEST and last.media_type == DOCKER_LAYER:
        return WasmLayer(last, True, "docker")
    if last.media_type == OCI_LAYER:
        return WasmLayer(last, True, "oci")
    for layer in layers:
        if layer.media_type in WASM_LAYERS:
            return WasmLayer(layer, False, "wasm")
    found = ", ".join(sorted({layer.media_type or "<none>" for layer in layers}))
    raise LayoutError(
        f"no usable layer: expected a Wasm layer ({WASM_LAYERS[0]}) or a last layer "
        f"{DOCKER_LAYER} / {OCI_LAYER} holding {PLUGIN_FILE}; found {found}"
    )


class _CappedGzip(io.RawIOBase):
    """A readable stream of decompressed gzip bytes that fails past ``limit`` bytes."""

    def __init__(self, data: bytes, limit: int) -> None:
        self._gz = gzip.GzipFile(fileobj=io.BytesIO(data), mode="rb")
        self._limit = limit
        self.total = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        want = min(len(buffer), 1 << 20)
        try:
            chunk = self._gz.read(want)
        except (OSError, EOFError, zlib.error) as exc:
            raise ArchiveError(f"layer is not valid gzip: {exc}") from None
        self.total += len(chunk)
        if self.total > self._limit:
            raise ArchiveError(f"layer decompresses to more than {self._limit} bytes")
        buffer[: len(chunk)] = chunk
        return len(chunk)


def extract_plugin(data: bytes, max_size: int) -> bytes:
    """Return the bytes of ``plugin.wasm`` (basename match) from a tar.gz layer.

    Decompression stops past ``4 * max_size + 1 MiB`` (bombs); the member must be a regular
    file, without ``..`` or absolute paths, at most ``max_size`` bytes (:class:`TooLarge`).
    """
    limit = 4 * max_size + (1 << 20)
    stream = io.BufferedReader(_CappedGzip(data, limit), buffer_size=1 << 16)
    try:
        with tarfile.open(fileobj=stream, mode="r|") as tar:
            for member in tar:
                name = member.name
                if posixpath.basename(name.rstrip("/")) != PLUGIN_FILE:
                    continue
                parts = name.split("/")
                if name.startswith("/") or ".." in parts:
                    raise ArchiveError(f"refusing archive member with path tricks: {name!r}")
                if member.issym() or member.islnk():
                    raise ArchiveError(f"refusing {PLUGIN_FILE} that is a link")
                if not member.isfile():
                    raise ArchiveError(f"{PLUGIN_FILE} in the layer is not a regular file")
                if member.size > max_size:
                    raise TooLarge(f"{PLUGIN_FILE} is {member.size} bytes, over the {max_size} cap")
                handle = tar.extractfile(member)
                assert handle is not None
                body = handle.read()
                if len(body) != member.size:
                    raise ArchiveError(f"{PLUGIN_FILE} is truncated in the layer")
                return body
    except tarfile.TarError as exc:
        raise ArchiveError(f"layer is not a valid tar archive: {exc}") from None
    raise ArchiveError(f"{PLUGIN_FILE} not found in the layer archive")
