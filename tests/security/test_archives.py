"""Hostile archives and OCI artifacts, pulled by ``wasm-agent prefetch`` as a real process.

Artifacts a real registry stores (tar tricks, bombs, a 10,000-layer manifest, lying sizes) are
pushed to Debian's ``docker-registry``; what no real registry would serve (a self-referencing
index, a 10 MB manifest, a body that never ends) comes from :class:`EvilServer`. The module size
cap is 16 MiB (``ISTIO_WASM_MAX_BINARY_SIZE_BYTES``). Every case must hold: exit status 1 with
a specific message, nothing in ``modules/`` (and no temp file left), the process's peak RSS
under :data:`RSS_LIMIT_MB`, done well within the deadline.
"""

from __future__ import annotations

import tarfile
from pathlib import Path

import pytest

from tests.security.evil import (
    EvilServer,
    digest,
    endless,
    gzip_bomb,
    json_bytes,
    manifest,
    member,
    nested_gzip,
    run_measured,
    tar_gz,
)
from tests.support.modserver import ModServer
from tests.support.oci_push import RawPusher, descriptor
from tests.support.registry import Registry, unique_repo
from tests.support.wasm import minimal_module

pytestmark = [pytest.mark.registry, pytest.mark.timeout(120)]

CAP = 16 * 1024 * 1024
RSS_LIMIT_MB = 200.0  # an idle prefetch peaks near 60-70 MB; a 16 MiB module adds ~2x that
WASM = minimal_module()
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
SYM, LNK = tarfile.SYMTYPE, tarfile.LNKTYPE
WASM_LAYER = "application/vnd.module.wasm.content.layer.v1+wasm"


def pull(url: str, cache_dir: Path, insecure: str, timeout: str = "20") -> tuple[int, str]:
    """Prefetch ``url``; assert the invariants; return (exit code, stderr)."""
    env = {"ISTIO_WASM_MAX_BINARY_SIZE_BYTES": str(CAP), "WASM_INSECURE_REGISTRIES": insecure,
           "WASM_HTTP_REQUEST_MAX_RETRIES": "1"}  # fmt: skip
    result = run_measured(
        ["prefetch", "--cache-dir", str(cache_dir), "--timeout", timeout, url], env
    )
    modules = cache_dir / "modules"
    left = sorted(p.name for p in modules.iterdir()) if modules.is_dir() else []
    assert left == [], f"something was cached: {left}\n{result.stderr[-2000:]}"
    assert result.peak_rss_mb < RSS_LIMIT_MB, result.peak_rss_mb
    print(f"{url}: exit {result.returncode}, peak RSS {result.peak_rss_mb:.1f} MB, "
          f"{result.seconds:.2f} s")  # fmt: skip
    return result.returncode, result.stderr


def image(pusher: RawPusher, layer: bytes, media_type: str = OCI_LAYER) -> str:
    repo = unique_repo("redteam")
    pusher.push_image(repo, "v1", [(media_type, layer)])
    return repo


TAR_CASES: dict[str, tuple[bytes, str]] = {
    "traversal": (tar_gz((member("../../plugin.wasm", size=len(WASM)), WASM)), "path tricks"),
    "absolute": (tar_gz((member("/plugin.wasm", size=len(WASM)), WASM)), "path tricks"),
    "symlink": (tar_gz((member("plugin.wasm", SYM, link="/etc/passwd"), None)), "is a link"),
    "hardlink": (tar_gz((member("plugin.wasm", LNK, link="/etc/passwd"), None)), "is a link"),
    "lying-member-size": (
        tar_gz((member("plugin.wasm", size=10 * 1024 * 1024), WASM[:8] + bytes(504))),
        "not a valid tar archive",
    ),
    "bomb-1GiB": (b"", "over the 16777216 cap"),
}


@pytest.fixture(scope="module")
def bomb_layer() -> bytes:
    """A tar.gz whose plugin.wasm is 1 GiB of zeros (about 1 MB compressed)."""
    import io
    import zlib

    raw = io.BytesIO()
    info = member("plugin.wasm", size=1 << 30)
    raw.write(info.tobuf(format=tarfile.USTAR_FORMAT))
    comp = zlib.compressobj(9, zlib.DEFLATED, 31)
    parts = [comp.compress(raw.getvalue())]
    block = bytes(1 << 20)
    parts += [comp.compress(block) for _ in range(1 << 10)]
    return b"".join(parts) + comp.flush()


@pytest.mark.parametrize("case", sorted(TAR_CASES))
def test_hostile_image_layer(
    oci_registry: Registry, oci_pusher: RawPusher, cache_dir: Path, bomb_layer: bytes, case: str
) -> None:
    """Tar traversal, absolute names, symlink and hardlink entries, a member whose header size
    lies, and a 1 GiB gzip bomb, each as the last layer of a real OCI image: refused, named."""
    layer, expected = TAR_CASES[case]
    repo = image(oci_pusher, bomb_layer if case.startswith("bomb") else layer)
    code, err = pull(oci_registry.oci_url(repo, "v1"), cache_dir, oci_registry.host)
    assert code == 1, err
    assert expected in err, err[-1500:]


def test_lying_descriptor_size(
    oci_registry: Registry, oci_pusher: RawPusher, cache_dir: Path
) -> None:
    """A manifest whose layer descriptor says 100 bytes for a bigger blob: the download stops
    at the declared size and fails as a size mismatch."""
    repo = unique_repo("redteam")
    blob = bytes(WASM) + bytes(4000)
    oci_pusher.push_blob(repo, blob)
    config = b"{}"
    oci_pusher.push_blob(repo, config)
    layer = {**descriptor(WASM_LAYER, blob), "size": 100}
    doc = {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
           "config": descriptor("application/vnd.module.wasm.config.v1+json", config),
           "layers": [layer]}  # fmt: skip
    oci_pusher.push_manifest(repo, "v1", json_bytes(doc), OCI_MANIFEST)
    code, err = pull(oci_registry.oci_url(repo, "v1"), cache_dir, oci_registry.host)
    assert code == 1 and "is larger than the 100 bytes its descriptor says" in err, err


def test_ten_thousand_layer_manifest(
    oci_registry: Registry, oci_pusher: RawPusher, cache_dir: Path
) -> None:
    """10,000 layers (none a Wasm layer, last not a tar.gz): refused from the manifest alone,
    no blob downloaded."""
    repo = unique_repo("redteam")
    blob = b"x" * 10
    oci_pusher.push_blob(repo, blob)
    config = b"{}"
    oci_pusher.push_blob(repo, config)
    layers = [descriptor("application/octet-stream", blob)] * 10_000
    doc = {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
           "config": descriptor("application/vnd.oci.image.config.v1+json", config),
           "layers": layers}  # fmt: skip
    body = json_bytes(doc)
    assert len(body) > 1_000_000
    oci_pusher.push_manifest(repo, "v1", body, OCI_MANIFEST)
    code, err = pull(oci_registry.oci_url(repo, "v1"), cache_dir, oci_registry.host)
    assert code == 1 and "no usable layer" in err, err[-1500:]
    oci_registry.sync_log()
    assert oci_registry.count_blob_gets(repo) == 0


def _evil_case(evil: EvilServer, case: str) -> tuple[str, str]:
    """Install ``case`` on ``evil``; return (URL, expected message part)."""
    base = "/v2/plugin"
    if case == "self-referencing-index":
        # an index naming a digest whose answer is the index again (bytes that cannot hash to it)
        fake = digest(b"the index itself")
        doc = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
            {"mediaType": OCI_MANIFEST, "digest": fake, "size": 1,
             "platform": {"os": "linux", "architecture": "amd64"}}]}  # fmt: skip
        body = json_bytes(doc)
        evil.route(f"{base}/manifests/v1", manifest(body, OCI_INDEX))
        evil.route(f"{base}/manifests/{fake}", manifest(body, OCI_INDEX))
        return f"oci://{evil.host}/plugin:v1", "not the requested"
    if case == "index-of-indexes":
        inner = json_bytes({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []})
        doc = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
            {"mediaType": OCI_INDEX, "digest": digest(inner), "size": len(inner)}]}  # fmt: skip
        evil.route(f"{base}/manifests/v1", manifest(json_bytes(doc), OCI_INDEX))
        evil.route(f"{base}/manifests/{digest(inner)}", manifest(inner, OCI_INDEX))
        return f"oci://{evil.host}/plugin:v1", "index has no linux/amd64"
    if case == "10MB-manifest":
        padding = "x" * (10 * 1024 * 1024)
        body = json_bytes({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "pad": padding})
        evil.route(f"{base}/manifests/v1", manifest(body, OCI_MANIFEST))
        return f"oci://{evil.host}/plugin:v1", "manifest is larger than 4194304 bytes"
    if case == "endless-manifest":
        evil.route(f"{base}/manifests/v1", endless(OCI_MANIFEST))
        return f"oci://{evil.host}/plugin:v1", "manifest is larger than 4194304 bytes"
    if case == "endless-blob":
        blob_digest = digest(b"never")
        config = {"mediaType": "application/vnd.module.wasm.config.v1+json",
                  "digest": digest(b"{}"), "size": 2}  # fmt: skip
        layer = {"mediaType": WASM_LAYER, "digest": blob_digest, "size": 1000}
        doc = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config, "layers": [layer]}
        evil.route(f"{base}/manifests/v1", manifest(json_bytes(doc), OCI_MANIFEST))
        evil.route(f"{base}/blobs/{blob_digest}", endless())
        return f"oci://{evil.host}/plugin:v1", "larger than the 1000 bytes its descriptor says"
    if case == "endless-http-module":
        evil.route("/endless.wasm", endless())
        return f"http://{evil.host}/endless.wasm", "exceeds 16777216 bytes"
    raise AssertionError(case)


EVIL_CASES = ["self-referencing-index", "index-of-indexes", "10MB-manifest", "endless-manifest",
              "endless-blob", "endless-http-module"]  # fmt: skip


@pytest.mark.parametrize("case", EVIL_CASES)
def test_hostile_registry_answers(cache_dir: Path, case: str) -> None:
    """What only a hostile server sends: refused with a specific message, bounded in time and
    memory (an endless body stops at the manifest or module cap, not at the deadline)."""
    with EvilServer() as evil:
        url, expected = _evil_case(evil, case)
        code, err = pull(url, cache_dir, evil.host)
    assert code == 1, err
    assert expected in err, err[-1500:]
    assert "deadline" not in err, err[-1500:]


@pytest.mark.parametrize("case", ["bomb", "nested-50"])
def test_hostile_http_module(modserver: ModServer, cache_dir: Path, case: str) -> None:
    """A 1 GiB gzip bomb and 50 nested gzip layers served over HTTP: refused, bounded."""
    body = gzip_bomb(1 << 30) if case == "bomb" else nested_gzip(WASM, 50)
    url = modserver.serve(f"/{case}.wasm", body)
    code, err = pull(url, cache_dir, "")
    assert code == 1, err
    expected = "exceeds 16777216 bytes" if case == "bomb" else "nest"
    assert expected in err, err
