"""OCI/Docker manifest and index parsing plus the pick of index entry and layer
(``wasm_agent.fetch.oci_layers``), as ``oci.py`` drives them.

Input: byte 0 picks the Content-Type header the registry sent (the ``mediaType`` field wins);
the rest is the manifest body. Only :class:`LayoutError` may escape; whatever is picked must be
a well-formed descriptor of the parsed document.
"""

from __future__ import annotations

from wasm_agent.fetch import oci_layers
from wasm_agent.fetch.oci_layers import (
    INDEX_TYPES,
    LayoutError,
    choose_layer,
    parse_manifest,
    select_from_index,
)

ALLOWED: tuple[type[BaseException], ...] = (LayoutError,)
MAX_LEN = 8192

CONTENT_TYPES = (
    "",
    oci_layers.OCI_MANIFEST,
    oci_layers.DOCKER_MANIFEST,
    oci_layers.OCI_INDEX,
    oci_layers.DOCKER_LIST,
    oci_layers.OCI_MANIFEST + "; charset=utf-8",
    "application/json",
    "text/plain",
)


def _check(descriptor: oci_layers.Descriptor) -> None:
    assert descriptor.digest.startswith("sha256:") and len(descriptor.digest) == 71
    assert isinstance(descriptor.size, int) and descriptor.size >= 0
    assert isinstance(descriptor.media_type, str)


def fuzz_one(data: bytes) -> None:
    """Parse ``data[1:]`` as a manifest and pick what the fetcher would download."""
    if not data:
        return
    content_type = CONTENT_TYPES[data[0] % len(CONTENT_TYPES)]
    manifest = parse_manifest(data[1:], content_type)
    if manifest.is_index:
        assert manifest.media_type in INDEX_TYPES and not manifest.layers
        entry = select_from_index(manifest)
        assert entry in manifest.manifests
        _check(entry)
        return
    layer = choose_layer(manifest)
    assert layer.descriptor in manifest.layers
    assert layer.archive == (layer.format in ("docker", "oci"))
    _check(layer.descriptor)
