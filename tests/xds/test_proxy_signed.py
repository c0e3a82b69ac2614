"""Signed modules through the proxy: an unsigned OCI module under a verify policy is NACKed
(or denied in deny mode) with the repository and the reason; a signed one is forwarded."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.xds_config import wasm_extension
from tests.support.cosign import Signer, cosign_sign, policy_yaml
from tests.support.istiod import FakeIstiod, sotw_response
from tests.support.oci_push import RawPusher
from tests.support.registry import Registry, unique_repo
from tests.support.wasm import padded_module, sha256_hex
from tests.xds.proxy_helpers import AdsClient, start_proxy
from wasm_agent.cache import ModuleCache
from wasm_agent.core.settings import CacheSettings, FetchSettings
from wasm_agent.fetch.trust_policy import parse_policy
from wasm_agent.xds.converter import WasmConverter
from wasm_agent.xds.types import ECDS_TYPE
from wasm_agent.xds.upstream import UpstreamSettings

pytestmark = [pytest.mark.timeout(60), pytest.mark.registry]
SIGNER = Signer.ecdsa()


@pytest.fixture
def istiod() -> Iterator[FakeIstiod]:
    with FakeIstiod() as server:
        server.auto_respond = False
        yield server


@pytest.fixture(params=["nack", "deny"])
async def proxy(request, istiod: FakeIstiod, oci_registry: Registry, tmp_path: Path):
    policy = parse_policy(policy_yaml([("**", [SIGNER.public_pem])]))
    fetch = FetchSettings(
        insecure_registries=frozenset({oci_registry.host}),
        default_fetch_timeout=30.0,
        verify_policy=policy,
    )
    cache = ModuleCache(CacheSettings(tmp_path / "cache"), fetch)
    sock = Path(tempfile.mkdtemp(prefix="wa-", dir="/tmp")) / "xds.sock"
    running = await start_proxy(
        sock,
        UpstreamSettings(address=istiod.address, plaintext=True),
        WasmConverter(cache, request.param),
    )
    ads = AdsClient(f"unix:{sock}")
    await ads.request(ECDS_TYPE, node=True)
    streams = await istiod.until(lambda: istiod.open_streams(), what="upstream stream")
    yield running, ads, streams[-1], request.param
    await ads.close()
    await running.stop(grace=1)
    cache.close()


async def test_unsigned_module_fails_and_signed_one_is_forwarded(
    proxy: tuple, istiod: FakeIstiod, oci_registry: Registry, oci_pusher: RawPusher
) -> None:
    _, ads, stream, mode = proxy
    data = padded_module(3000, seed=91 if mode == "nack" else 92)
    repo = unique_repo("xds-signed")
    pushed = oci_pusher.push_wasm_artifact(repo, "v1", data)
    url = oci_registry.oci_url(repo, "v1")
    istiod.send_response(sotw_response(ECDS_TYPE, [wasm_extension(url)], "v1", "U"))
    repository = f"{oci_registry.host}/{repo}"
    if mode == "nack":
        nacks = await istiod.until(lambda: [r for r in stream.requests if r.response_nonce == "U"])
        message = nacks[0].error_detail.message
        assert nacks[0].error_detail.code == 13
        assert f"signature check failed for repository {repository}: no signature" in message
    else:  # fail-closed plugin in deny mode: a deny-all RBAC filter reaches Envoy instead
        denied = await ads.read(timeout=30)
        assert denied.nonce == "U"
        assert "rbac" in denied.resources[0].value.decode(errors="replace").lower()
    cosign_sign(oci_pusher, oci_registry.host, repo, pushed.digest, SIGNER)
    istiod.send_response(sotw_response(ECDS_TYPE, [wasm_extension(url)], "v2", "S"))
    forwarded = await ads.read(timeout=30)
    assert forwarded.nonce == "S"
    assert f"{sha256_hex(data)}.wasm".encode() in forwarded.resources[0].value
