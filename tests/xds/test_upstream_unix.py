"""The istiod hop over a Unix socket (``--discovery-address unix:PATH``, pilot-agent's XDS socket).

The test control plane listens on a Unix socket only; the proxy reaches it through the socket
for SotW and Delta streams, relative and absolute socket paths, ECDS NACKs and a restart of the
control plane on the same socket.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.istiod import FakeIstiod
from tests.xds.ecds_builders import extension, packed, wasm_filter
from tests.xds.proxy_helpers import AdsClient, start_proxy
from wasm_agent.cache import ModuleCache
from wasm_agent.core.settings import CacheSettings, FetchSettings
from wasm_agent.xds.converter import WasmConverter
from wasm_agent.xds.types import CLUSTER_TYPE, ECDS_TYPE
from wasm_agent.xds.upstream import UpstreamError, UpstreamSettings, grpc_target

pytestmark = pytest.mark.timeout(60)


def short_dir() -> Path:
    """Unix socket paths are limited to 107 bytes: work under a short directory."""
    return Path(tempfile.mkdtemp(prefix="wa-", dir="/tmp"))


@pytest.fixture
def istiod() -> Iterator[FakeIstiod]:
    with FakeIstiod(socket=short_dir() / "istiod.sock") as server:
        server.set_resources(CLUSTER_TYPE, {}, "v1")
        yield server


@pytest.mark.parametrize("delta", [False, True])
async def test_streams_reach_istiod_through_its_unix_socket(
    istiod: FakeIstiod, delta: bool
) -> None:
    assert istiod.address.startswith("unix:/") and istiod.port == 0
    proxy = await start_proxy(
        short_dir() / "xds.sock", UpstreamSettings(address=istiod.address, plaintext=True)
    )
    ads = AdsClient(proxy.listen.address, delta=delta)
    try:
        await ads.request(CLUSTER_TYPE, node=True)
        response = await ads.read()
        version = response.system_version_info if delta else response.version_info
        assert version == "v1"
        stream = istiod.open_streams()[-1]
        assert stream.delta is delta
        assert stream.requests[0].node.id.startswith("sidecar~")
        assert proxy.ready
    finally:
        await ads.close()
        await proxy.stop(grace=1)


async def test_relative_and_triple_slash_socket_paths(
    istiod: FakeIstiod, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert istiod.socket is not None
    monkeypatch.chdir(istiod.socket.parent)  # pilot-agent's default is ./etc/istio/proxy/XDS
    for address in (f"unix:{istiod.socket.name}", f"unix://{istiod.socket}"):
        proxy = await start_proxy(
            short_dir() / "xds.sock", UpstreamSettings(address=address, plaintext=True)
        )
        ads = AdsClient(proxy.listen.address)
        try:
            await ads.request(CLUSTER_TYPE, node=True)
            assert (await ads.read()).version_info == "v1", address
        finally:
            await ads.close()
            await proxy.stop(grace=1)


async def test_ecds_nack_goes_back_through_the_socket(istiod: FakeIstiod, tmp_path: Path) -> None:
    istiod.set_resources(
        ECDS_TYPE, {"bad": extension("bad", packed(wasm_filter(url="ftp://x/m.wasm")))}, "e1"
    )
    cache = ModuleCache(CacheSettings(tmp_path / "cache"), FetchSettings())
    proxy = await start_proxy(
        short_dir() / "xds.sock",
        UpstreamSettings(address=istiod.address, plaintext=True),
        WasmConverter(cache, "nack"),
    )
    ads = AdsClient(proxy.listen.address)
    try:
        await ads.request(ECDS_TYPE, node=True, resource_names=["bad"])
        nacks = await istiod.until(lambda: istiod.nacks(ECDS_TYPE), what="the agent's NACK")
        assert "unsupported Wasm module downloading URL scheme 'ftp'" in (
            nacks[0].error_detail.message
        )
    finally:
        await ads.close()
        await proxy.stop(grace=1)
        cache.close()


async def test_istiod_restart_on_the_same_socket_is_reached_again(istiod: FakeIstiod) -> None:
    proxy = await start_proxy(
        short_dir() / "xds.sock", UpstreamSettings(address=istiod.address, plaintext=True)
    )
    try:
        first = AdsClient(proxy.listen.address)
        await first.request(CLUSTER_TYPE, node=True)
        assert (await first.read()).version_info == "v1"
        istiod.restart()  # the socket file is removed and bound again
        istiod.set_resources(CLUSTER_TYPE, {}, "v2")
        await first.close()
        second = AdsClient(proxy.listen.address)
        await second.request(CLUSTER_TYPE, node=True)
        assert (await second.read(timeout=20)).version_info == "v2"
        await second.close()
    finally:
        await proxy.stop(grace=1)


@pytest.mark.parametrize(
    ("address", "target"),
    [
        ("unix:./etc/istio/proxy/XDS", "unix:./etc/istio/proxy/XDS"),
        ("unix:/var/run/istio/XDS", "unix:/var/run/istio/XDS"),
        ("unix:///var/run/istio/XDS", "unix:///var/run/istio/XDS"),
        ("istiod.istio-system.svc:15012", "istiod.istio-system.svc:15012"),
        ("127.0.0.1:15010", "127.0.0.1:15010"),
        ("[::1]:15010", "[::1]:15010"),
    ],
)
def test_grpc_target_accepts_sockets_and_host_ports(address: str, target: str) -> None:
    assert grpc_target(address) == target


@pytest.mark.parametrize(
    ("address", "why"),
    [
        ("unix:", "needs a socket path"),
        ("unix://relative/XDS", "needs an absolute path"),
        ("nocolon", "expected unix:PATH or HOST:PORT"),
        ("istiod:", "expected unix:PATH or HOST:PORT"),
        (":15010", "expected unix:PATH or HOST:PORT"),
        ("istiod:http", "expected unix:PATH or HOST:PORT"),
        ("istiod:99999", "port 99999 is out of range"),
        ("", "expected unix:PATH or HOST:PORT"),
    ],
)
def test_bad_addresses_are_refused_naming_the_field(address: str, why: str) -> None:
    with pytest.raises(UpstreamError) as raised:
        UpstreamSettings(address=address, plaintext=True)
    assert str(raised.value).startswith("address: ") and why in str(raised.value)
    assert repr(address) in str(raised.value)
