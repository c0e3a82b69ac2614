"""Keyless signatures through the module cache and the xDS proxy (real docker-registry).

Cache: a keyless-verified module is recorded under the entry's ``keyless:`` fingerprint and
served again without a request; a new trusted root verifies again. Proxy: a module signed by
the wrong identity is NACKed with the reason, then forwarded once the right identity signs.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.xds_config import wasm_extension
from tests.support.istiod import FakeIstiod, sotw_response
from tests.support.oci_push import Pushed, RawPusher
from tests.support.registry import Registry, unique_repo
from tests.support.sigstore import (
    FulcioCA,
    KeylessSigner,
    RekorLog,
    keyless_policy_yaml,
    push_referrer,
    sign_statement,
    sigstore_bundle,
    trusted_root_json,
)
from tests.support.wasm import padded_module, sha256_hex
from tests.xds.proxy_helpers import AdsClient, start_proxy
from wasm_agent.cache import ModuleCache
from wasm_agent.cache.model import ModuleRequest
from wasm_agent.core.settings import CacheSettings, FetchSettings
from wasm_agent.fetch.trust_policy import TrustPolicy, parse_policy
from wasm_agent.xds.converter import WasmConverter
from wasm_agent.xds.types import ECDS_TYPE
from wasm_agent.xds.upstream import UpstreamSettings

pytestmark = [pytest.mark.timeout(60), pytest.mark.registry]

WORKFLOW = "https://github.com/acme/filter/.github/workflows/release.yml@refs/heads/main"
GITHUB = "https://token.actions.githubusercontent.com"
CA, LOG = FulcioCA(), RekorLog()
_seed = iter(range(50_000, 60_000))


def policy(directory: Path, root: bytes | None = None) -> TrustPolicy:
    (directory / "trusted_root.json").write_bytes(root or trusted_root_json([CA], [LOG]))
    text = keyless_policy_yaml(
        [("**", [{"identity": WORKFLOW, "issuer": GITHUB}])], "trusted_root.json"
    )
    return parse_policy(text, "policy.yaml", base=directory)


def make_cache(directory: Path, registry: Registry, pol: TrustPolicy) -> ModuleCache:
    fetch = FetchSettings(
        insecure_registries=frozenset({registry.host}),
        default_fetch_timeout=30.0,
        verify_policy=pol,
    )
    return ModuleCache(CacheSettings(directory), fetch)


def sign(registry: Registry, pusher: RawPusher, repo: str, pushed: Pushed, who: str) -> None:
    statement = sign_statement(f"{registry.host}/{repo}", pushed.digest)
    push_referrer(pusher, repo, pushed, sigstore_bundle(KeylessSigner(CA, LOG, who), statement))


def repo_gets(registry: Registry, repo: str) -> list[str]:
    return [p for m, p in registry.requests() if m == "GET" and p.startswith(f"/v2/{repo}/")]


async def test_cache_records_the_identity_and_serves_it_without_a_request(
    tmp_path: Path, oci_registry: Registry, oci_pusher: RawPusher
) -> None:
    repo = unique_repo("kl-cache")
    pushed = oci_pusher.push_wasm_artifact(repo, "v1", padded_module(3000, seed=next(_seed)))
    sign(oci_registry, oci_pusher, repo, pushed, WORKFLOW)
    url = oci_registry.oci_url(repo, "v1")
    (tmp_path / "p1").mkdir()
    pol = policy(tmp_path / "p1")
    first = await make_cache(tmp_path / "c", oci_registry, pol).get(ModuleRequest(url=url))
    assert not first.hit
    index = json.loads((tmp_path / "c" / "index.json").read_text())
    (entry,) = pol.rules[0].keyless
    record = index["signatures"][f"{oci_registry.host}/{repo}@{pushed.digest}"]
    assert record == [entry.fingerprint] and entry.fingerprint.startswith("keyless:")
    seen = len(repo_gets(oci_registry, repo))
    again = make_cache(tmp_path / "c", oci_registry, pol)
    hit = await again.get(ModuleRequest(url=url, sha256=pushed.hex))
    assert hit.hit and hit.path == first.path and len(repo_gets(oci_registry, repo)) == seen
    # another trusted root (a rotated log key added): not trusted from the record, verified again
    (tmp_path / "p2").mkdir()
    rotated = policy(tmp_path / "p2", trusted_root_json([CA], [LOG, RekorLog()]))
    cache = make_cache(tmp_path / "c", oci_registry, rotated)
    assert cache.lookup(ModuleRequest(url=url)) is None
    await cache.get(ModuleRequest(url=url))
    assert len(repo_gets(oci_registry, repo)) > seen


@pytest.fixture
def istiod() -> Iterator[FakeIstiod]:
    with FakeIstiod() as server:
        server.auto_respond = False
        yield server


async def test_proxy_nacks_the_wrong_identity_then_forwards_the_right_one(
    tmp_path: Path, istiod: FakeIstiod, oci_registry: Registry, oci_pusher: RawPusher
) -> None:
    cache = make_cache(tmp_path / "cache", oci_registry, policy(tmp_path))
    sock = Path(tempfile.mkdtemp(prefix="wa-", dir="/tmp")) / "xds.sock"
    running = await start_proxy(
        sock, UpstreamSettings(address=istiod.address, plaintext=True), WasmConverter(cache, "nack")
    )
    ads = AdsClient(f"unix:{sock}")
    try:
        await ads.request(ECDS_TYPE, node=True)
        (stream,) = await istiod.until(lambda: istiod.open_streams(), what="upstream stream")
        data = padded_module(3000, seed=next(_seed))
        repo = unique_repo("kl-xds")
        pushed = oci_pusher.push_wasm_artifact(repo, "v1", data)
        sign(oci_registry, oci_pusher, repo, pushed, "mallory@evil.test")
        url = oci_registry.oci_url(repo, "v1")
        istiod.send_response(sotw_response(ECDS_TYPE, [wasm_extension(url)], "v1", "U"))
        nacks = await istiod.until(lambda: [r for r in stream.requests if r.response_nonce == "U"])
        message = nacks[0].error_detail.message
        assert f"signature check failed for repository {oci_registry.host}/{repo}: " in message
        assert "identity mismatch" in message and "mallory@evil.test" in message
        sign(oci_registry, oci_pusher, repo, pushed, WORKFLOW)
        istiod.send_response(sotw_response(ECDS_TYPE, [wasm_extension(url)], "v2", "S"))
        forwarded = await ads.read(timeout=30)
        assert forwarded.nonce == "S"
        assert f"{sha256_hex(data)}.wasm".encode() in forwarded.resources[0].value
    finally:
        await ads.close()
        await running.stop(grace=1)
        cache.close()
