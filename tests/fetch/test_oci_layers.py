"""Manifest parsing, layer choice, plugin.wasm extraction and auth challenges (pure code)."""

from __future__ import annotations

import gzip
import io
import json
import tarfile

import pytest

from tests.support.oci_push import targz
from wasm_agent.fetch import oci_layers as L
from wasm_agent.fetch.oci_auth import parse_challenge

WASM = b"\x00asm\x01\x00\x00\x00"
D1 = "sha256:" + "1" * 64
D2 = "sha256:" + "2" * 64


def _manifest(media_type: str, layers: list[str]) -> bytes:
    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": media_type,
            "config": {"mediaType": "x", "digest": D1, "size": 2},
            "layers": [{"mediaType": mt, "digest": D2, "size": 10} for mt in layers],
        }
    ).encode()


def _tar_with(info: tarfile.TarInfo, data: bytes = b"") -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        tar.addfile(info, io.BytesIO(data) if data else None)
    return gzip.compress(raw.getvalue())


@pytest.mark.parametrize(
    ("media_type", "layers", "fmt"),
    [
        (L.DOCKER_MANIFEST, [L.DOCKER_LAYER], "docker"),
        (L.OCI_MANIFEST, ["application/json", L.OCI_LAYER], "oci"),
        (L.OCI_MANIFEST, [L.WASM_LAYERS[0]], "wasm"),
        (L.OCI_MANIFEST, [L.WASM_LAYERS[1]], "wasm"),
        ("", [L.WASM_LAYERS[0]], "wasm"),  # OCI allows omitting mediaType
    ],
)
def test_choose_layer(media_type: str, layers: list[str], fmt: str) -> None:
    manifest = L.parse_manifest(_manifest(media_type, layers))
    assert L.choose_layer(manifest).format == fmt


def test_no_usable_layer_names_what_was_found() -> None:
    manifest = L.parse_manifest(_manifest(L.OCI_MANIFEST, ["text/plain", "application/x-tar"]))
    with pytest.raises(L.LayoutError, match="found application/x-tar, text/plain"):
        L.choose_layer(manifest)
    with pytest.raises(L.LayoutError, match="no layers"):
        L.choose_layer(L.parse_manifest(_manifest(L.OCI_MANIFEST, [])))


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"not json", "not valid JSON"),
        (b"[]", "not a JSON object"),
        (b'{"schemaVersion": 1}', "schemaVersion"),
        (b'{"schemaVersion": 2, "mediaType": "application/x"}', "unsupported manifest media"),
        (
            b'{"schemaVersion": 2, "mediaType": "'
            + L.OCI_MANIFEST.encode()
            + b'", "layers": [{"digest": "md5:00", "size": 1}]}',
            "digest",
        ),
    ],
)
def test_bad_manifests(body: bytes, message: str) -> None:
    with pytest.raises(L.LayoutError, match=message):
        L.parse_manifest(body)


def _index(entries: list[dict | None]) -> L.Manifest:
    doc = {
        "schemaVersion": 2,
        "mediaType": L.OCI_INDEX,
        "manifests": [
            {"mediaType": L.OCI_MANIFEST, "digest": f"sha256:{i:064x}", "size": 1}
            | ({"platform": p} if p else {})
            for i, p in enumerate(entries)
        ],
    }
    return L.parse_manifest(json.dumps(doc).encode())


def test_index_selection() -> None:
    amd = {"os": "linux", "architecture": "amd64"}
    arm = {"os": "linux", "architecture": "arm64"}
    wasm = {"os": "wasip1", "architecture": "wasm"}
    assert L.select_from_index(_index([arm, amd])).digest.endswith("1")
    assert L.select_from_index(_index([arm, wasm])).digest.endswith("1")
    assert L.select_from_index(_index([None])).digest.endswith("0")
    with pytest.raises(L.LayoutError, match="linux/arm64"):
        L.select_from_index(_index([arm, {"os": "darwin", "architecture": "arm64"}]))
    with pytest.raises(L.LayoutError, match="0 entries"):
        L.select_from_index(_index([]))


@pytest.mark.parametrize("name", ["plugin.wasm", "./plugin.wasm", "a/b/plugin.wasm"])
def test_extract_plugin(name: str) -> None:
    assert L.extract_plugin(targz({"other": b"x", name: WASM}), 1000) == WASM


def test_extract_refuses_links_and_tricks() -> None:
    with pytest.raises(L.ArchiveError, match="link"):
        L.extract_plugin(targz({}, symlinks={"plugin.wasm": "/etc/passwd"}), 1000)
    hard = tarfile.TarInfo("plugin.wasm")
    hard.type = tarfile.LNKTYPE
    hard.linkname = "other"
    with pytest.raises(L.ArchiveError, match="link"):
        L.extract_plugin(_tar_with(hard), 1000)
    with pytest.raises(L.ArchiveError, match="path tricks"):
        L.extract_plugin(targz({"../plugin.wasm": WASM}), 1000)
    with pytest.raises(L.ArchiveError, match="path tricks"):
        L.extract_plugin(targz({"/abs/plugin.wasm": WASM}), 1000)
    directory = tarfile.TarInfo("plugin.wasm")
    directory.type = tarfile.DIRTYPE
    with pytest.raises(L.ArchiveError, match="not a regular file"):
        L.extract_plugin(_tar_with(directory), 1000)


def test_extract_limits_and_garbage() -> None:
    with pytest.raises(L.TooLarge):
        L.extract_plugin(targz({"plugin.wasm": WASM * 100}), 100)
    with pytest.raises(L.ArchiveError, match="decompresses"):
        L.extract_plugin(targz({"zeros": bytes(3_000_000), "plugin.wasm": WASM}), 100_000)
    with pytest.raises(L.ArchiveError, match="gzip"):
        L.extract_plugin(b"\x1f\x8bnot really gzip", 1000)
    with pytest.raises(L.ArchiveError, match="gzip"):
        L.extract_plugin(targz({"plugin.wasm": WASM * 50})[:-20], 1000)
    with pytest.raises(L.ArchiveError, match="not found"):
        L.extract_plugin(targz({"filter.wasm": WASM}), 1000)


def test_parse_challenge() -> None:
    c = parse_challenge(
        'Bearer realm="https://auth.example/token",service="registry.example",'
        'scope="repository:a/b:pull,push",error="insufficient_scope"'
    )
    assert c.scheme == "bearer"
    assert c.params == {
        "realm": "https://auth.example/token",
        "service": "registry.example",
        "scope": "repository:a/b:pull,push",
        "error": "insufficient_scope",
    }
    assert parse_challenge('Basic realm="basic-realm"') == parse_challenge(
        'basic realm="basic-realm"'
    )
    assert parse_challenge('Bearer realm="a\\"b", service=svc').params == {
        "realm": 'a"b',
        "service": "svc",
    }
