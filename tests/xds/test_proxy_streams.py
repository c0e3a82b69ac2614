"""The proxy's stream handling against the fake istiod (grpcio) and an Envoy-like client."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.service.discovery.v3 import discovery_pb2

from tests.support.istiod import FakeIstiod, sotw_response
from tests.xds.proxy_helpers import AdsClient, refusals, start_proxy
from wasm_agent.core.metrics import REGISTRY
from wasm_agent.xds.proxy import XdsProxy
from wasm_agent.xds.types import CLUSTER_TYPE, ECDS_TYPE, LISTENER_TYPE
from wasm_agent.xds.upstream import SOTW_METHOD, UpstreamSettings

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def istiod():
    with FakeIstiod() as server:
        yield server


@pytest.fixture
def sock(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import tempfile

    return Path(tempfile.mkdtemp(prefix="wa-", dir="/tmp")) / "xds.sock"


@pytest.fixture
async def proxy(istiod: FakeIstiod, sock: Path) -> AsyncIterator[XdsProxy]:
    running = await start_proxy(sock, UpstreamSettings(address=istiod.address, plaintext=True))
    yield running
    await running.stop(grace=1)


async def until(predicate: Callable[[], Any], timeout: float = 30.0, what: str = "") -> Any:
    """Poll ``predicate`` in this event loop until it returns something truthy."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not (value := predicate()):
        assert loop.time() < deadline, f"{what or 'condition'} not met in {timeout} s"
        await asyncio.sleep(0.02)
    return value


def client(sock: Path, **kw) -> AdsClient:
    return AdsClient(f"unix:{sock}", **kw)


def clusters(count: int, size: int = 0) -> dict[str, cluster_pb2.Cluster]:
    return {
        f"c{i}": cluster_pb2.Cluster(name=f"c{i}", alt_stat_name="x" * size) for i in range(count)
    }


@pytest.mark.parametrize("delta", [False, True], ids=["sotw", "delta"])
async def test_responses_pass_as_the_exact_bytes(
    istiod: FakeIstiod, proxy: XdsProxy, sock: Path, delta: bool
) -> None:
    ads = client(sock, delta=delta)
    await ads.request(CLUSTER_TYPE, node=True)
    await istiod.until(lambda: istiod.open_streams(), what="upstream stream")
    stream = istiod.open_streams()[-1]
    kind = discovery_pb2.DeltaDiscoveryResponse if delta else discovery_pb2.DiscoveryResponse
    # unknown field 99 (varint) and a non-canonical field order: a re-encode would change them
    body = kind(type_url=CLUSTER_TYPE, nonce="n1").SerializeToString()
    odd = b"\x98\x06\x2a" + body + b"\x98\x06\x2b"
    istiod.send_raw(odd, stream)
    assert await ads.read_raw() == odd
    # a 10 MB response (over grpc's default 4 MiB limit) passes unchanged too
    big = kind(type_url=CLUSTER_TYPE, nonce="n2")
    if delta:
        big.resources.add(name="big").resource.Pack(cluster_pb2.Cluster(alt_stat_name="y" * 10**7))
    else:
        big.resources.add().Pack(cluster_pb2.Cluster(alt_stat_name="y" * 10**7))
    istiod.send_raw(big.SerializeToString(), stream)
    assert await ads.read_raw() == big.SerializeToString()
    await ads.close()


async def test_requests_reach_istiod_node_first_and_envoy_nacks_pass(
    istiod: FakeIstiod, proxy: XdsProxy, sock: Path
) -> None:
    istiod.set_resources(CLUSTER_TYPE, clusters(2), "v1")
    ads = client(sock)
    await ads.request(CLUSTER_TYPE, node=True)
    response = await ads.read()
    assert response.version_info == "v1" and len(response.resources) == 2
    error = {"code": 3, "message": "envoy rejected it"}
    await ads.request(CLUSTER_TYPE, response_nonce=response.nonce, error_detail=error)
    requests = await istiod.until(lambda: len(istiod.all_requests()) == 2 and istiod.all_requests())
    assert requests[0].node.id.startswith("sidecar~") and not requests[1].HasField("node")
    assert requests[1].error_detail.message == "envoy rejected it"
    assert proxy.ready
    await ads.close()


async def test_node_is_resent_when_the_upstream_stream_is_reopened(
    sock: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="wasm_agent.xds.streams")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proxy = await start_proxy(sock, UpstreamSettings(address=f"127.0.0.1:{port}", plaintext=True))
    ads = client(sock)
    await ads.request(CLUSTER_TYPE, node=True)
    await ads.request(LISTENER_TYPE)
    # istiod is down: the first upstream stream fails and the proxy says it re-opens it
    reopens = await until(lambda: [r for r in caplog.records if "re-opening" in r.getMessage()])
    assert not proxy.ready
    reopen = reopens[0]
    assert reopen.discovery == f"127.0.0.1:{port}" and reopen.cause  # type: ignore[attr-defined]
    with FakeIstiod(port=port) as istiod:
        istiod.set_resources(LISTENER_TYPE, {}, "l1")
        response = await ads.read(timeout=15)
        assert response.type_url == LISTENER_TYPE
        first = istiod.open_streams()[0].requests
        assert first[0].HasField("node") and first[0].type_url == CLUSTER_TYPE
        assert first[1].type_url == LISTENER_TYPE
        await ads.close()
    await proxy.stop(grace=1)


async def test_upstream_failure_ends_envoy_stream_and_envoy_close_ends_upstream(
    istiod: FakeIstiod, proxy: XdsProxy, sock: Path
) -> None:
    terminations = REGISTRY.counter("istiod_connection_terminations", "", labels=("type",)).value(
        type="error"
    )
    ads = client(sock)
    await ads.request(CLUSTER_TYPE, node=True)
    await istiod.until(lambda: istiod.open_streams())
    istiod.set_resources(CLUSTER_TYPE, clusters(1), "v1")
    await ads.read()
    istiod.abort(istiod.open_streams()[-1], grpc.StatusCode.INTERNAL, "boom")
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await ads.read()
    assert failure.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "boom" in str(failure.value.details())
    counter = REGISTRY.counter("istiod_connection_terminations", "", labels=("type",))
    assert counter.value(type="error") == terminations + 1
    await ads.close()

    other = client(sock)
    await other.request(CLUSTER_TYPE, node=True)
    await other.read()
    assert len(istiod.open_streams()) == 1
    await other.close()  # Envoy goes away: the upstream stream closes too
    await istiod.until(lambda: not istiod.open_streams(), what="upstream closed")
    await until(lambda: not proxy.streams, what="the proxy forgets the stream")


async def test_slow_envoy_holds_back_istiod(
    istiod: FakeIstiod, proxy: XdsProxy, sock: Path
) -> None:
    ads = client(sock)
    await ads.request(CLUSTER_TYPE, node=True)
    stream = await istiod.until(lambda: istiod.open_streams())
    stream = stream[-1]
    one_mb = sotw_response(CLUSTER_TYPE, list(clusters(1, 10**6).values()), "v", "n")
    data = one_mb.SerializeToString()
    for _ in range(200):
        istiod.send_raw(data, stream)
    await asyncio.sleep(1.0)
    # Envoy reads nothing: flow control stops the proxy, then istiod (no unbounded queue);
    # what is in flight is a few HTTP/2 windows and the proxy's 2-response outbox
    assert stream.yielded < 60, stream.yielded
    for _ in range(200):
        assert (await ads.read()).nonce == "n"
    assert stream.yielded == 200
    await ads.close()


async def test_garbage_and_oversized_responses_end_only_their_stream(
    istiod: FakeIstiod, proxy: XdsProxy, sock: Path
) -> None:
    istiod.set_resources(CLUSTER_TYPE, clusters(1), "v1")
    healthy = client(sock)
    await healthy.request(CLUSTER_TYPE, node=True)
    await healthy.read()
    for payload in (b"\xff\xff\xff\xff garbage", b"\x22" + b"\xff" * 11):
        victim = client(sock)
        await victim.request(CLUSTER_TYPE, node=True)
        await victim.read()
        istiod.send_raw(payload, istiod.open_streams()[-1])
        with pytest.raises(grpc.aio.AioRpcError) as failure:
            await victim.read()
        assert failure.value.code() == grpc.StatusCode.UNAVAILABLE
        await victim.close()
    # 100 MB ECDS response: over the 64 MiB limit, the stream ends with an error
    victim = client(sock)
    await victim.request(ECDS_TYPE, node=True)
    (target,) = await istiod.until(
        lambda: [
            s
            for s in istiod.open_streams()
            if s.requests[:1] and s.requests[0].type_url == ECDS_TYPE
        ]
    )
    huge = discovery_pb2.DiscoveryResponse(type_url=ECDS_TYPE, nonce="huge")
    huge.resources.add(type_url=ECDS_TYPE, value=b"\x0a\x01x" + b"\x00" * (100 * 2**20))
    istiod.send_response(huge, target)
    with pytest.raises(grpc.aio.AioRpcError):
        await victim.read(timeout=30)
    await victim.close()
    # the first stream never noticed
    istiod.set_resources(CLUSTER_TYPE, clusters(2), "v2")
    assert (await healthy.read()).version_info == "v2"
    await healthy.close()


async def test_a_thousand_streams_are_refused_beyond_the_limit(
    istiod: FakeIstiod, proxy: XdsProxy, sock: Path
) -> None:
    istiod.set_resources(CLUSTER_TYPE, clusters(1), "v1")
    first = client(sock)
    await first.request(CLUSTER_TYPE, node=True)
    await first.read()
    flood = AdsClient(f"unix:{sock}")
    method: grpc.aio.StreamStreamMultiCallable[bytes, bytes]
    method = flood.channel.stream_stream(SOTW_METHOD)
    calls = [method() for _ in range(1000)]
    refused = await refusals(calls, 1000 - proxy.listen.max_streams)
    assert len(refused) >= 1000 - proxy.listen.max_streams
    for call in calls:
        call.cancel()
    await flood.close()
    istiod.set_resources(CLUSTER_TYPE, clusters(3), "v3")
    assert (await first.read()).version_info == "v3"
    await first.close()
