"""ECDS through the proxy: real cache and HTTP module server; NACK shapes, supersede, order."""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from envoy.config.core.v3 import extension_pb2
from envoy.service.discovery.v3 import discovery_pb2

from tests.e2e.xds_config import wasm_extension
from tests.support.istiod import FakeIstiod, as_any, sotw_response
from tests.support.modserver import ModServer
from tests.support.plugins_wat import header_plugin
from tests.support.wasm import sha256_hex
from tests.xds.proxy_helpers import AdsClient, start_proxy
from wasm_agent.cache import ModuleCache
from wasm_agent.core.settings import CacheSettings, FetchSettings
from wasm_agent.xds.converter import WasmConverter
from wasm_agent.xds.proxy import XdsProxy
from wasm_agent.xds.types import CLUSTER_TYPE, ECDS_TYPE
from wasm_agent.xds.upstream import UpstreamSettings

pytestmark = pytest.mark.timeout(60)
V1, V2 = header_plugin("ecds-v1"), header_plugin("ecds-v2")


@pytest.fixture(scope="module")
def mods() -> Iterator[ModServer]:
    with ModServer() as server:
        yield server


@pytest.fixture
def istiod() -> Iterator[FakeIstiod]:
    with FakeIstiod() as server:
        server.auto_respond = False
        yield server


def _proxy_fixture(mode: str):
    @pytest.fixture
    async def fixture(istiod: FakeIstiod, tmp_path: Path) -> AsyncIterator[XdsProxy]:
        sock = Path(tempfile.mkdtemp(prefix="wa-", dir="/tmp")) / "xds.sock"
        cache = ModuleCache(CacheSettings(tmp_path / "cache"), FetchSettings())
        running = await start_proxy(
            sock,
            UpstreamSettings(address=istiod.address, plaintext=True),
            WasmConverter(cache, mode),
        )
        yield running
        await running.stop(grace=1)
        cache.close()

    return fixture


proxy = _proxy_fixture("nack")
deny_proxy = _proxy_fixture("deny")


async def connect(proxy: XdsProxy, istiod: FakeIstiod, delta: bool = False):
    ads = AdsClient(proxy.listen.address, delta=delta)
    await ads.request(ECDS_TYPE, node=True)
    streams = await istiod.until(lambda: istiod.open_streams(), what="upstream stream")
    return ads, streams[-1]


def ecds_response(ext: extension_pb2.TypedExtensionConfig, version: str, nonce: str, delta: bool):
    if delta:
        message = discovery_pb2.DeltaDiscoveryResponse(
            type_url=ECDS_TYPE, nonce=nonce, system_version_info=version
        )
        message.resources.add(name=ext.name, version=version, resource=as_any(ext))
        return message
    return sotw_response(ECDS_TYPE, [ext], version, nonce)


def module_path(response) -> str:
    resource = response.resources[0]
    packed = resource.resource if hasattr(resource, "resource") else resource
    ext = extension_pb2.TypedExtensionConfig()
    packed.Unpack(ext)
    from envoy.extensions.filters.http.wasm.v3 import wasm_pb2

    wasm = wasm_pb2.Wasm()
    ext.typed_config.Unpack(wasm)
    return wasm.config.vm_config.code.local.filename


@pytest.mark.parametrize("delta", [False, True], ids=["sotw", "delta"])
async def test_failed_fetch_nacks_with_the_last_acked_version(
    istiod: FakeIstiod, proxy: XdsProxy, mods: ModServer, delta: bool
) -> None:
    good = mods.serve(f"/nack-{delta}/v1.wasm", V1)
    ads, stream = await connect(proxy, istiod, delta)
    istiod.send_response(ecds_response(wasm_extension(good, sha256_hex(V1)), "v1", "A", delta))
    forwarded = await ads.read()
    assert module_path(forwarded).endswith(f"{sha256_hex(V1)}.wasm")
    ack = {"response_nonce": "A"} | ({} if delta else {"version_info": "v1"})
    await ads.request(ECDS_TYPE, **ack)
    # the proxy learns the ACKed version from the ACK it passes upstream: wait for it there
    await istiod.until(lambda: [r for r in stream.requests if r.response_nonce == "A"])
    bad = wasm_extension(mods.url(f"/nack-{delta}/missing.wasm"), "00" * 32)
    istiod.send_response(ecds_response(bad, "v2", "B", delta))
    nack = (await istiod.until(lambda: [r for r in stream.requests if r.response_nonce == "B"]))[0]
    assert nack.error_detail.code == 13 and nack.type_url == ECDS_TYPE
    assert "missing.wasm" in nack.error_detail.message
    assert not nack.HasField("node")
    if not delta:
        assert nack.version_info == "v1"
    with pytest.raises(asyncio.TimeoutError):
        await ads.read(timeout=0.5)  # Envoy receives nothing
    await ads.close()


async def test_malformed_resource_nacks_even_in_deny_mode(
    istiod: FakeIstiod, deny_proxy: XdsProxy, mods: ModServer
) -> None:
    ads, stream = await connect(deny_proxy, istiod)
    broken = discovery_pb2.DiscoveryResponse(type_url=ECDS_TYPE, nonce="M", version_info="m")
    broken.resources.add(type_url=ECDS_TYPE, value=b"\xff\xff")
    istiod.send_response(broken)
    nack = (await istiod.until(lambda: [r for r in stream.requests if r.response_nonce == "M"]))[0]
    assert nack.error_detail.code == 13
    # a failed fetch of a fail-closed plugin in deny mode: deny-all RBAC, no NACK
    bad = wasm_extension(mods.url("/deny/none.wasm"), "00" * 32)
    istiod.send_response(ecds_response(bad, "d", "D", False))
    forwarded = await ads.read(timeout=30)
    assert forwarded.nonce == "D"
    assert "rbac" in forwarded.resources[0].value.decode(errors="replace").lower()
    assert not [r for r in stream.requests if r.response_nonce == "D"]
    await ads.close()


async def test_newer_ecds_supersedes_one_still_converting_and_others_pass(
    istiod: FakeIstiod, proxy: XdsProxy, mods: ModServer
) -> None:
    slow = mods.slow("/supersede/slow.wasm", V1, chunk=16, delay=0.1)
    fast = mods.serve("/supersede/fast.wasm", V2)
    ads, stream = await connect(proxy, istiod)
    istiod.send_response(ecds_response(wasm_extension(slow, sha256_hex(V1)), "s1", "S1", False))
    await istiod.until(lambda: mods.count("/supersede/slow.wasm"), what="the slow download")
    istiod.send_response(sotw_response(CLUSTER_TYPE, [], "c1", "C1"))
    istiod.send_response(ecds_response(wasm_extension(fast, sha256_hex(V2)), "s2", "S2", False))
    first = await ads.read()
    assert first.type_url == CLUSTER_TYPE  # other types do not wait for a pending ECDS
    second = await ads.read()
    assert second.nonce == "S2" and module_path(second).endswith(f"{sha256_hex(V2)}.wasm")
    with pytest.raises(asyncio.TimeoutError):
        await ads.read(timeout=3)  # S1 was cancelled: never forwarded ...
    assert not [r for r in stream.requests if r.response_nonce == "S1"]  # ... nor NACKed
    await ads.close()


async def test_delta_ecds_responses_are_all_delivered_in_order(
    istiod: FakeIstiod, proxy: XdsProxy, mods: ModServer
) -> None:
    slow = mods.slow("/delta-order/slow.wasm", V1, chunk=64, delay=0.05)
    fast = mods.serve("/delta-order/fast.wasm", V2)
    ads, _ = await connect(proxy, istiod, delta=True)
    first = wasm_extension(slow, sha256_hex(V1), name="first")
    istiod.send_response(ecds_response(first, "1", "D1", True))
    second = wasm_extension(fast, sha256_hex(V2), name="second")
    istiod.send_response(ecds_response(second, "2", "D2", True))
    assert [(await ads.read()).nonce for _ in range(2)] == ["D1", "D2"]
    await ads.close()


async def test_concurrent_fetches_and_cache_hits(
    istiod: FakeIstiod, proxy: XdsProxy, mods: ModServer
) -> None:
    a = mods.slow("/concurrent/a.wasm", V1, chunk=64, delay=0.5)
    b = mods.slow("/concurrent/b.wasm", V2, chunk=64, delay=0.5)
    ads, _ = await connect(proxy, istiod)
    both = [
        wasm_extension(a, sha256_hex(V1), name="a"),
        wasm_extension(b, sha256_hex(V2), name="b"),
    ]
    loop = asyncio.get_running_loop()
    istiod.send_response(sotw_response(ECDS_TYPE, both, "c1", "N1"))
    await istiod.until(lambda: mods.count("/concurrent/a.wasm") + mods.count("/concurrent/b.wasm"))
    started = loop.time()
    await istiod.until(
        lambda: mods.count("/concurrent/a.wasm") and mods.count("/concurrent/b.wasm"), timeout=30
    )
    # One body drips for at least (chunks - 1) delays, however loaded the machine: the second
    # download starting sooner than that after the first means they ran concurrently. (The time
    # to the response also counts the compile check, which a loaded machine can stretch.)
    one_body = min(len(V1), len(V2)) // 64 * 0.5
    assert loop.time() - started < one_body, "fetches of one response run concurrently"
    assert len((await ads.read(timeout=30)).resources) == 2
    istiod.send_response(sotw_response(ECDS_TYPE, both, "c2", "N2"))
    assert (await ads.read()).nonce == "N2"
    assert mods.count("/concurrent/a.wasm") == 1 and mods.count("/concurrent/b.wasm") == 1
    await ads.close()
