"""Signed modules through the module cache: verified once, marked in the index, re-verified
only when the policy asks for keys that have not verified the cached digest."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.support.cosign import Signer, cosign_sign, policy_yaml
from tests.support.modserver import ModServer
from tests.support.oci_push import RawPusher
from tests.support.registry import Registry, unique_repo
from tests.support.wasm import padded_module, sha256_hex
from wasm_agent.cache import ModuleCache
from wasm_agent.cache.model import ModuleRequest
from wasm_agent.core.settings import CacheSettings, FetchSettings
from wasm_agent.fetch.cosign import Reason
from wasm_agent.fetch.errors import SignatureFailure
from wasm_agent.fetch.trust_policy import TrustPolicy, parse_policy

pytestmark = pytest.mark.registry

SIGNER, OTHER = Signer.ecdsa(), Signer.ed25519()
_seed = iter(range(20_000, 30_000))


def policy(*keys: Signer) -> TrustPolicy:
    return parse_policy(policy_yaml([("**", [k.public_pem for k in keys])]))


NONE = parse_policy(policy_yaml([("**", None)]))


def make_cache(directory: Path, registry: Registry, pol: TrustPolicy | None) -> ModuleCache:
    fetch = FetchSettings(
        insecure_registries=frozenset({registry.host}),
        default_fetch_timeout=30.0,
        verify_policy=pol,
    )
    return ModuleCache(CacheSettings(directory), fetch)


def repo_requests(registry: Registry, repo: str) -> list[str]:
    return [p for m, p in registry.requests() if m == "GET" and p.startswith(f"/v2/{repo}/")]


def push_signed(registry: Registry, pusher: RawPusher, *signers: Signer):
    repo = unique_repo("cached")
    pushed = pusher.push_wasm_artifact(repo, "v1", padded_module(4096, seed=next(_seed)))
    if signers:
        cosign_sign(pusher, registry.host, repo, pushed.digest, *signers)
    return repo, pushed


async def test_hit_does_not_fetch_the_signature_again(
    tmp_path: Path, oci_registry: Registry, oci_pusher: RawPusher
) -> None:
    repo, pushed = push_signed(oci_registry, oci_pusher, SIGNER)
    url = oci_registry.oci_url(repo, "v1")
    first = await make_cache(tmp_path, oci_registry, policy(SIGNER)).get(ModuleRequest(url=url))
    assert not first.hit
    index = json.loads((tmp_path / "index.json").read_text())
    (key,) = policy(SIGNER).rules[0].keys or ()
    assert index["signatures"] == {f"{oci_registry.host}/{repo}@{pushed.digest}": [key.fingerprint]}
    seen = len(repo_requests(oci_registry, repo))
    # a new process, same directory and keys: served from the cache without any request
    again = make_cache(tmp_path, oci_registry, policy(SIGNER))
    assert again.lookup(ModuleRequest(url=url)) is not None
    hit = await again.get(ModuleRequest(url=url, sha256=pushed.hex))
    assert hit.hit and hit.path == first.path
    assert len(repo_requests(oci_registry, repo)) == seen


async def test_hit_under_a_stricter_policy_verifies(
    tmp_path: Path, oci_registry: Registry, oci_pusher: RawPusher
) -> None:
    repo, pushed = push_signed(oci_registry, oci_pusher)  # unsigned for now
    url = oci_registry.oci_url(repo, "v1")
    for pol in (None, NONE):  # cached without a policy, then under a policy needing nothing
        found = await make_cache(tmp_path, oci_registry, pol).get(ModuleRequest(url=url))
    assert found.hit
    strict = make_cache(tmp_path, oci_registry, policy(SIGNER))
    assert strict.lookup(ModuleRequest(url=url)) is None  # never served unverified
    with pytest.raises(SignatureFailure) as caught:
        await strict.get(ModuleRequest(url=url))
    assert caught.value.reason is Reason.NO_SIGNATURE  # type: ignore[attr-defined]
    assert found.path.is_file()  # the module stays cached for policies that allow it
    cosign_sign(oci_pusher, oci_registry.host, repo, pushed.digest, SIGNER)
    verified = await strict.get(ModuleRequest(url=url))
    assert verified.path == found.path
    assert strict.lookup(ModuleRequest(url=url)) is not None


async def test_other_keys_verify_again_and_are_added(
    tmp_path: Path, oci_registry: Registry, oci_pusher: RawPusher
) -> None:
    repo, pushed = push_signed(oci_registry, oci_pusher, SIGNER, OTHER)
    url = oci_registry.oci_url(repo, "v1")
    await make_cache(tmp_path, oci_registry, policy(SIGNER)).get(ModuleRequest(url=url))
    sig_path = f"/v2/{repo}/manifests/sha256-{pushed.hex}.sig"
    assert repo_requests(oci_registry, repo).count(sig_path) == 1
    other = make_cache(tmp_path, oci_registry, policy(OTHER))
    assert other.lookup(ModuleRequest(url=url)) is None
    await other.get(ModuleRequest(url=url))
    assert repo_requests(oci_registry, repo).count(sig_path) == 2
    index = json.loads((tmp_path / "index.json").read_text())
    assert len(index["signatures"][f"{oci_registry.host}/{repo}@{pushed.digest}"]) == 2
    # a policy trusting either key is now served from the cache
    either = make_cache(tmp_path, oci_registry, policy(SIGNER, OTHER))
    assert either.lookup(ModuleRequest(url=url)) is not None
    assert repo_requests(oci_registry, repo).count(sig_path) == 2


async def test_failed_verification_caches_nothing(
    tmp_path: Path, oci_registry: Registry, oci_pusher: RawPusher
) -> None:
    repo, _ = push_signed(oci_registry, oci_pusher, OTHER)
    cache = make_cache(tmp_path, oci_registry, policy(SIGNER))
    with pytest.raises(SignatureFailure, match="wrong key"):
        await cache.get(ModuleRequest(url=oci_registry.oci_url(repo, "v1")))
    assert list((tmp_path / "modules").glob("*.wasm")) == []
    assert not re.search(
        repo, (tmp_path / "index.json").read_text() if (tmp_path / "index.json").exists() else ""
    )


async def test_https_modules_are_outside_the_policy(tmp_path: Path, oci_registry: Registry) -> None:
    data = padded_module(2048, seed=next(_seed))
    with ModServer() as server:
        url = server.serve("/plain.wasm", data)
        found = await make_cache(tmp_path, oci_registry, policy(SIGNER)).get(
            ModuleRequest(url=url, sha256=sha256_hex(data))
        )
    assert found.sha256 == sha256_hex(data)
