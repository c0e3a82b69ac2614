"""fetch_oci against a real docker-registry: formats, references, indexes, integrity."""

from __future__ import annotations

import hashlib
import ipaddress
import itertools
import json
import time
from pathlib import Path

import pytest
import wasmtime

from tests.support.modserver import self_signed_cert
from tests.support.oci_push import (
    DOCKER_LAYER,
    DOCKER_LIST,
    DOCKER_MANIFEST,
    OCI_LAYER,
    WASM_LAYER_ALT,
    RawPusher,
    oras_push_wasm,
    targz,
)
from tests.support.registry import Registry, unique_repo
from tests.support.wasm import minimal_module, padded_module, sha256_hex
from wasm_agent.core.settings import FetchSettings
from wasm_agent.fetch.errors import (
    BlockedAddress,
    ChecksumMismatch,
    DownloadFailure,
    ManifestFailure,
    UnboxError,
)
from wasm_agent.fetch.model import FetchRequest
from wasm_agent.fetch.oci import fetch_oci, resolve_oci_digest

pytestmark = pytest.mark.registry


def settings_for(registry: Registry, **kw: object) -> FetchSettings:
    """Settings that allow the test registry's plain HTTP, with few retries."""
    base: dict[str, object] = {
        "insecure_registries": frozenset({registry.host}),
        "default_fetch_timeout": 30.0,
        "http_max_retries": 2,
    }
    base.update(kw)
    return FetchSettings(**base)  # type: ignore[arg-type]


async def fetch(registry: Registry, url: str, **kw: object):
    settings = kw.pop("settings", None) or settings_for(registry)
    return await fetch_oci(FetchRequest(url=url, **kw), settings)  # type: ignore[arg-type]


def _leb(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _section(section_id: int, payload: bytes) -> bytes:
    return bytes([section_id]) + _leb(len(payload)) + payload


def big_module(size: int) -> bytes:
    """A valid module of ``size`` bytes of random-ish data, built directly (wat2wasm is slow)."""
    payload = hashlib.sha256(b"big").digest() * (size // 32)
    pages = len(payload) // 65536 + 1
    module = (
        b"\x00asm\x01\x00\x00\x00"
        + _section(1, b"\x01\x60\x00\x00")
        + _section(3, b"\x01\x00")
        + _section(5, b"\x01\x00" + _leb(pages))
        + _section(7, b"\x01\x06_start\x00\x00")
        + _section(10, b"\x01\x02\x00\x0b")
        + _section(11, b"\x01\x00\x41\x00\x0b" + _leb(len(payload)) + payload)
    )
    wasmtime.Module.validate(wasmtime.Engine(), module)
    return module


# -- formats -------------------------------------------------------------------------------------


async def test_wasm_artifact_pushed_with_oras(oci_registry: Registry, tmp_path: Path) -> None:
    module = padded_module(4096, seed=1)
    repo = unique_repo()
    digest = oras_push_wasm(oci_registry.host, repo, "v1", module, tmp_path)
    got = await fetch(oci_registry, oci_registry.oci_url(repo, "v1"))
    assert got.data == module
    assert got.sha256 == sha256_hex(module)
    assert got.oci_digest == digest
    assert got.checksum == digest.removeprefix("sha256:")
    assert oci_registry.count_blob_gets(repo) == 1  # the config blob is never downloaded


async def test_alternative_wasm_media_type(oci_registry: Registry, tmp_path: Path) -> None:
    module = padded_module(2048, seed=2)
    repo = unique_repo()
    oras_push_wasm(oci_registry.host, repo, "v1", module, tmp_path, media_type=WASM_LAYER_ALT)
    got = await fetch(oci_registry, oci_registry.oci_url(repo, "v1"))
    assert got.data == module


@pytest.mark.parametrize("member", ["plugin.wasm", "./plugin.wasm", "usr/lib/plugin.wasm"])
async def test_docker_image(oci_registry: Registry, oci_pusher: RawPusher, member: str) -> None:
    module = padded_module(3000, seed=3)
    repo = unique_repo()
    pushed = oci_pusher.push_docker_image(repo, "v1", module, name=member)
    got = await fetch(oci_registry, oci_registry.oci_url(repo, "v1"))
    assert got.data == module
    assert got.oci_digest == pushed.digest


async def test_oci_image(oci_registry: Registry, oci_pusher: RawPusher) -> None:
    module = padded_module(3000, seed=4)
    repo = unique_repo()
    pushed = oci_pusher.push_oci_image(repo, "v1", module)
    got = await fetch(oci_registry, oci_registry.oci_url(repo, "v1"))
    assert got.data == module
    assert got.checksum == pushed.hex


async def test_last_layer_is_used(oci_registry: Registry, oci_pusher: RawPusher) -> None:
    old, new = padded_module(1000, seed=5), padded_module(1000, seed=6)
    repo = unique_repo()
    layers = [(DOCKER_LAYER, targz({"plugin.wasm": old})), (DOCKER_LAYER, targz({"x": b"1"}))]
    layers.append((DOCKER_LAYER, targz({"README": b"hi", "plugin.wasm": new})))
    oci_pusher.push_image(repo, "v1", layers, manifest_type=DOCKER_MANIFEST)
    got = await fetch(oci_registry, oci_registry.oci_url(repo, "v1"))
    assert got.data == new
    assert oci_registry.count_blob_gets(repo) == 1


async def test_digest_reference(oci_registry: Registry, oci_pusher: RawPusher) -> None:
    module = minimal_module()
    repo = unique_repo()
    pushed = oci_pusher.push_oci_image(repo, "v1", module)
    got = await fetch(oci_registry, oci_registry.oci_url(repo, digest=pushed.digest))
    assert got.data == module and got.oci_digest == pushed.digest
    assert oci_registry.count_requests("GET", rf"/v2/{repo}/manifests/{pushed.digest}$") == 1


async def test_default_tag_is_latest(oci_registry: Registry, oci_pusher: RawPusher) -> None:
    repo = unique_repo()
    oci_pusher.push_wasm_artifact(repo, "latest", minimal_module())
    got = await fetch(oci_registry, f"oci://{oci_registry.host}/{repo}")
    assert got.data == minimal_module()


# -- indexes and manifest lists ------------------------------------------------------------------


async def test_index_picks_linux_amd64(oci_registry: Registry, oci_pusher: RawPusher) -> None:
    repo = unique_repo()
    arm = oci_pusher.push_oci_image(repo, "arm", padded_module(800, seed=7))
    amd = oci_pusher.push_oci_image(repo, "amd", padded_module(800, seed=8))
    index = oci_pusher.push_index(
        repo,
        "multi",
        [
            (arm, {"os": "linux", "architecture": "arm64"}),
            (amd, {"os": "linux", "architecture": "amd64"}),
        ],
    )
    got = await fetch(oci_registry, oci_registry.oci_url(repo, "multi"))
    assert got.data == padded_module(800, seed=8)
    assert got.oci_digest == amd.digest  # the image manifest's digest, as Istio reports it
    by_digest = await fetch(oci_registry, oci_registry.oci_url(repo, digest=index.digest))
    assert by_digest.data == got.data


async def test_docker_manifest_list(oci_registry: Registry, oci_pusher: RawPusher) -> None:
    repo = unique_repo()
    amd = oci_pusher.push_docker_image(repo, "amd", padded_module(900, seed=9))
    oci_pusher.push_index(
        repo, "list", [(amd, {"os": "linux", "architecture": "amd64"})], media_type=DOCKER_LIST
    )
    got = await fetch(oci_registry, oci_registry.oci_url(repo, "list"))
    assert got.data == padded_module(900, seed=9)


async def test_index_single_wasm_entry(oci_registry: Registry, oci_pusher: RawPusher) -> None:
    repo = unique_repo()
    wasm = oci_pusher.push_wasm_artifact(repo, "w", padded_module(700, seed=10))
    arm = oci_pusher.push_oci_image(repo, "arm", padded_module(700, seed=11))
    oci_pusher.push_index(
        repo,
        "idx",
        [
            (arm, {"os": "linux", "architecture": "arm64"}),
            (wasm, {"os": "wasip1", "architecture": "wasm"}),
        ],
    )
    got = await fetch(oci_registry, oci_registry.oci_url(repo, "idx"))
    assert got.data == padded_module(700, seed=10)
    assert got.oci_digest == wasm.digest


async def test_index_without_usable_entry(oci_registry: Registry, oci_pusher: RawPusher) -> None:
    repo = unique_repo()
    a = oci_pusher.push_oci_image(repo, "a", padded_module(700, seed=12))
    b = oci_pusher.push_oci_image(repo, "b", padded_module(700, seed=13))
    oci_pusher.push_index(
        repo,
        "idx",
        [
            (a, {"os": "linux", "architecture": "arm64"}),
            (b, {"os": "windows", "architecture": "amd64"}),
        ],
    )
    with pytest.raises(ManifestFailure, match=r"linux/arm64.*windows/amd64|found 2 entries"):
        await fetch(oci_registry, oci_registry.oci_url(repo, "idx"))
    assert oci_registry.count_blob_gets(repo) == 0


# -- integrity -----------------------------------------------------------------------------------


async def test_expected_checksum_matches(oci_registry: Registry, oci_pusher: RawPusher) -> None:
    repo = unique_repo()
    pushed = oci_pusher.push_wasm_artifact(repo, "v1", minimal_module())
    got = await fetch(oci_registry, oci_registry.oci_url(repo, "v1"), sha256=pushed.hex.upper())
    assert got.checksum == pushed.hex


async def test_expected_checksum_mismatch_before_any_blob(
    oci_registry: Registry, oci_pusher: RawPusher
) -> None:
    repo = unique_repo()
    pushed = oci_pusher.push_wasm_artifact(repo, "v1", minimal_module())
    wrong = "0" * 64
    with pytest.raises(ChecksumMismatch) as info:
        await fetch(oci_registry, oci_registry.oci_url(repo, "v1"), sha256=wrong)
    assert pushed.digest in str(info.value) and wrong in str(info.value)
    assert info.value.result == "checksum_mismatched"
    assert oci_registry.count_blob_gets(repo) == 0


@pytest.mark.parametrize("same_size", [True, False])
async def test_tampered_blob(
    oci_registry: Registry, oci_pusher: RawPusher, same_size: bool
) -> None:
    repo = unique_repo()
    module = padded_module(5000, seed=14)
    pushed = oci_pusher.push_wasm_artifact(repo, "v1", module)
    layer = json.loads(pushed.manifest)["layers"][0]["digest"]
    evil = bytearray(module)
    evil[-1] ^= 0xFF
    oci_registry.tamper_blob(layer, bytes(evil) if same_size else bytes(evil) + b"more")
    with pytest.raises(ChecksumMismatch, match=layer):
        await fetch(oci_registry, oci_registry.oci_url(repo, "v1"))


async def test_tampered_manifest(oci_registry: Registry, oci_pusher: RawPusher) -> None:
    repo = unique_repo()
    pushed = oci_pusher.push_wasm_artifact(repo, "v1", minimal_module())
    doctored = pushed.manifest.replace(b'"schemaVersion": 2', b'"schemaVersion":  2')
    assert doctored != pushed.manifest
    oci_registry.tamper_blob(pushed.digest, doctored)
    for url in (oci_registry.oci_url(repo, "v1"), oci_registry.oci_url(repo, digest=pushed.digest)):
        with pytest.raises(ChecksumMismatch, match="manifest bytes hash"):
            await fetch(oci_registry, url)
    assert oci_registry.count_blob_gets(repo) == 0


async def test_layer_over_size_cap_not_downloaded(
    oci_registry: Registry, oci_pusher: RawPusher
) -> None:
    repo = unique_repo()
    oci_pusher.push_wasm_artifact(repo, "v1", padded_module(20_000, seed=15))
    settings = settings_for(oci_registry, max_binary_size=10_000)
    with pytest.raises(DownloadFailure, match="limit"):
        await fetch(oci_registry, oci_registry.oci_url(repo, "v1"), settings=settings)
    assert oci_registry.count_blob_gets(repo) == 0


async def test_archive_member_over_size_cap(oci_registry: Registry, oci_pusher: RawPusher) -> None:
    repo = unique_repo()
    oci_pusher.push_oci_image(repo, "v1", bytes(200_000))  # compresses far below the cap
    settings = settings_for(oci_registry, max_binary_size=100_000)
    with pytest.raises(DownloadFailure, match="cap"):
        await fetch(oci_registry, oci_registry.oci_url(repo, "v1"), settings=settings)


# -- unusable images -----------------------------------------------------------------------------


async def test_no_usable_layer(oci_registry: Registry, oci_pusher: RawPusher) -> None:
    repo = unique_repo()
    oci_pusher.push_image(repo, "v1", [("application/vnd.oci.image.layer.v1.tar", b"x" * 10)])
    with pytest.raises(ManifestFailure, match=r"application/vnd\.oci\.image\.layer\.v1\.tar"):
        await fetch(oci_registry, oci_registry.oci_url(repo, "v1"))
    assert oci_registry.count_blob_gets(repo) == 0


async def test_plugin_wasm_missing_from_layer(
    oci_registry: Registry, oci_pusher: RawPusher
) -> None:
    repo = unique_repo()
    oci_pusher.push_image(repo, "v1", [(OCI_LAYER, targz({"filter.wasm": minimal_module()}))])
    with pytest.raises(UnboxError, match=r"plugin\.wasm not found"):
        await fetch(oci_registry, oci_registry.oci_url(repo, "v1"))


async def test_plugin_wasm_symlink_refused(oci_registry: Registry, oci_pusher: RawPusher) -> None:
    repo = unique_repo()
    layer = targz({"real.wasm": minimal_module()}, symlinks={"plugin.wasm": "/etc/passwd"})
    oci_pusher.push_image(repo, "v1", [(OCI_LAYER, layer)])
    with pytest.raises(UnboxError, match="link"):
        await fetch(oci_registry, oci_registry.oci_url(repo, "v1"))


async def test_gzip_bomb_refused(oci_registry: Registry, oci_pusher: RawPusher) -> None:
    repo = unique_repo()
    # 50 MB of zeros before plugin.wasm: about 50 KB compressed.
    bomb = targz({"filler": bytes(50_000_000), "plugin.wasm": minimal_module()})
    oci_pusher.push_image(repo, "v1", [(OCI_LAYER, bomb)])
    settings = settings_for(oci_registry, max_binary_size=1_000_000)
    with pytest.raises(UnboxError, match="decompresses to more than"):
        await fetch(oci_registry, oci_registry.oci_url(repo, "v1"), settings=settings)


@pytest.mark.parametrize("path", ["no/such/repo:v1", "wasm/exists:nosuchtag"])
async def test_not_found(oci_registry: Registry, oci_pusher: RawPusher, path: str) -> None:
    oci_pusher.push_wasm_artifact("wasm/exists", "v1", minimal_module())
    with pytest.raises(ManifestFailure, match="404") as info:
        await fetch(oci_registry, f"oci://{oci_registry.host}/{path}")
    assert info.value.result == "manifest_failure"


async def test_malformed_reference() -> None:
    with pytest.raises(ManifestFailure, match="invalid image reference"):
        await fetch_oci(FetchRequest(url="oci://127.0.0.1:1/Bad/Repo"), FetchSettings())


# -- transport policy ----------------------------------------------------------------------------


async def test_plain_http_refused_unless_insecure(
    oci_registry: Registry, oci_pusher: RawPusher
) -> None:
    repo = unique_repo()
    oci_pusher.push_wasm_artifact(repo, "v1", minimal_module())
    started = time.monotonic()
    with pytest.raises(DownloadFailure, match="WASM_INSECURE_REGISTRIES"):
        await fetch(oci_registry, oci_registry.oci_url(repo, "v1"), settings=FetchSettings())
    assert time.monotonic() - started < 2.0  # a TLS failure is not retried
    assert oci_registry.count_requests("GET", rf"/v2/{repo}/") == 0


async def test_registry_at_blocked_address(oci_registry: Registry) -> None:
    settings = settings_for(oci_registry, blocked_networks=(ipaddress.ip_network("127.0.0.0/8"),))
    with pytest.raises(BlockedAddress, match=r"127\.0\.0\.1"):
        await fetch(oci_registry, oci_registry.oci_url("any/repo", "v1"), settings=settings)


async def test_progress_and_5mb_pull(oci_registry: Registry, oci_pusher: RawPusher) -> None:
    repo = unique_repo()
    module = big_module(5 * 1024 * 1024)
    oci_pusher.push_wasm_artifact(repo, "v1", module)
    seen: list[tuple[int, int | None]] = []
    started = time.perf_counter()
    got = await fetch_oci(
        FetchRequest(url=oci_registry.oci_url(repo, "v1")),
        settings_for(oci_registry),
        progress=lambda done, total: seen.append((done, total)),
    )
    elapsed = time.perf_counter() - started
    assert got.data == module
    assert seen[-1] == (len(module), len(module))
    assert all(a[0] <= b[0] for a, b in itertools.pairwise(seen))
    print(f"5 MiB OCI pull: {elapsed * 1000:.0f} ms")


@pytest.fixture(scope="module")
def tls_registry(tmp_path_factory: pytest.TempPathFactory):
    """A registry serving HTTPS with a self-signed certificate, and one image in it."""
    directory = tmp_path_factory.mktemp("registry-tls")
    tls = self_signed_cert(directory / "tls")
    with Registry(directory / "reg", tls=tls) as registry, RawPusher(registry.url) as pusher:
        pushed = pusher.push_wasm_artifact("tls/image", "v1", padded_module(900, seed=17))
        yield registry, tls, pushed


async def test_self_signed_tls_registry(tls_registry, monkeypatch: pytest.MonkeyPatch) -> None:
    registry, tls, pushed = tls_registry
    url = registry.oci_url("tls/image", "v1")
    # Verified TLS by default: a self-signed certificate is refused, with a hint.
    with pytest.raises(DownloadFailure, match=r"certificate verif.*WASM_INSECURE_REGISTRIES"):
        await fetch_oci(FetchRequest(url=url), FetchSettings())
    # An insecure registry skips verification (and stays on HTTPS).
    got = await fetch_oci(FetchRequest(url=url), settings_for(registry))
    assert got.oci_digest == pushed.digest
    # Trusting the certificate (SSL_CERT_FILE, as Go honours it) verifies it.
    monkeypatch.setenv("SSL_CERT_FILE", str(tls.cert))
    got = await fetch_oci(FetchRequest(url=url), FetchSettings(default_fetch_timeout=30.0))
    assert got.oci_digest == pushed.digest


async def test_resolve_digest_without_downloading(
    oci_registry: Registry, oci_pusher: RawPusher
) -> None:
    repo = unique_repo()
    amd = oci_pusher.push_oci_image(repo, "amd", padded_module(600, seed=18))
    oci_pusher.push_index(repo, "idx", [(amd, {"os": "linux", "architecture": "amd64"})])
    settings = settings_for(oci_registry)
    for tag in ("amd", "idx"):
        request = FetchRequest(url=oci_registry.oci_url(repo, tag))
        assert await resolve_oci_digest(request, settings) == amd.hex
    assert oci_registry.count_blob_gets(repo) == 0
    got = await fetch_oci(FetchRequest(url=oci_registry.oci_url(repo, "idx")), settings)
    assert got.checksum == amd.hex
