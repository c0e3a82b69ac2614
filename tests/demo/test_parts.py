"""The demo's parts on their own, as tests/support uses them: the control plane (Delta, NACK
records, aborts), the HTTP server (TLS, hooks, request log) and Envoy's command line."""

from __future__ import annotations

import asyncio
import queue
import ssl
from pathlib import Path

import grpc
import httpx
import yaml
from envoy.config.cluster.v3 import cluster_pb2
from envoy.service.discovery.v3 import discovery_pb2

from tests.support.modserver import self_signed_cert
from tests.xds.proxy_helpers import AdsClient
from wasm_agent.demo.controlplane import Abort, ControlPlane
from wasm_agent.demo.envoy import envoy_command, listener_port_in, parse_stats
from wasm_agent.demo.modserver import HttpServer, Request, send_response
from wasm_agent.xds.types import CLUSTER_TYPE
from wasm_agent.xds.upstream import ADS_SERVICE


async def test_control_plane_serves_delta_records_nacks_and_aborts() -> None:
    control = ControlPlane(nonce_prefix="n-")
    await control.start()
    ads = AdsClient(control.address, delta=True)
    try:
        await ads.request(CLUSTER_TYPE, node=True)
        await control.wait_subscribed(CLUSTER_TYPE, 5)
        [nonce] = await control.set_resources(
            CLUSTER_TYPE, {"c1": cluster_pb2.Cluster(name="c1")}, "v1"
        )
        response = await ads.read()
        assert (response.nonce, response.system_version_info) == (nonce, "v1") == ("n-1", "v1")
        assert [r.name for r in response.resources] == ["c1"]
        await ads.request(CLUSTER_TYPE, response_nonce=nonce, error_detail={"message": "no"})
        reply = await control.wait_reply(nonce, 5)
        assert reply.nack and reply.error == "no"
        [stream] = control.open_streams()
        assert stream.delta and len(stream.requests) == 2
        stream.send(Abort(grpc.StatusCode.UNAVAILABLE, "injected"))
        try:
            await ads.read()
            raise AssertionError("the stream was not aborted")
        except grpc.aio.AioRpcError as error:
            assert (error.code(), error.details()) == (grpc.StatusCode.UNAVAILABLE, "injected")
    finally:
        await ads.close()
        await control.stop()


async def test_http_server_over_tls_hands_hooked_paths_to_the_hook(tmp_path: Path) -> None:
    tls = self_signed_cert(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tls.cert, tls.key)
    server = HttpServer("test", ssl_context=context)
    await server.start()

    async def teapot(request: Request, writer: asyncio.StreamWriter) -> None:
        await send_response(writer, 418, f"{request.method} {request.hits}".encode())

    try:
        page = server.serve("/m.wasm", b"\0asm")
        hooked = server.hook("/tea", teapot)
        assert page.startswith("https://127.0.0.1:")
        async with httpx.AsyncClient(verify=tls.client_context()) as client:
            assert (await client.get(page)).content == b"\0asm"
            assert (await client.post(page)).status_code == 405
            assert (await client.get(server.url("/nope"))).status_code == 404
            answer = await client.post(hooked, headers={"X-Probe": "1"})
        assert (answer.status_code, answer.text) == (418, "POST 1")
        assert server.requests[-1].headers["x-probe"] == "1"
        assert server.counts == {"/m.wasm": 2, "/nope": 1, "/tea": 1}
    finally:
        await server.stop()


def test_envoy_command_writes_the_bootstrap_with_a_local_admin(tmp_path: Path) -> None:
    command = envoy_command("/bin/envoy", {"node": {"id": "x"}}, tmp_path, "debug", ["--x"])
    assert command[:3] == ["/bin/envoy", "-c", str(tmp_path / "envoy.yaml")]
    assert command[-3:] == ["--log-level", "debug", "--x"]
    written = yaml.safe_load((tmp_path / "envoy.yaml").read_text())
    assert written["admin"]["address"]["socket_address"] == {
        "address": "127.0.0.1",
        "port_value": 0,
    }
    assert written["node"] == {"id": "x"}


def test_admin_parsing() -> None:
    assert parse_stats("a.b: 3\nc: -1\nh: P0(nan,1)\n") == {"a.b": 3, "c": -1}
    listeners = {
        "listener_statuses": [
            {"name": "l", "local_address": {"socket_address": {"port_value": 8080}}}
        ]
    }
    assert listener_port_in(listeners, "l") == 8080
    assert listener_port_in(listeners, "other") is None


def test_a_stream_send_from_another_thread_wakes_the_server_loop() -> None:
    """``Stream.send`` from a test thread reaches the client at once (no other wake-up)."""
    import threading

    from tests.support.istiod import FakeIstiod

    with FakeIstiod() as istiod:
        channel = grpc.insecure_channel(istiod.address)
        call = channel.stream_stream(
            f"/{ADS_SERVICE}/StreamAggregatedResources",
            request_serializer=lambda b: b,
            response_deserializer=lambda b: b,
        )
        requests: queue.Queue[bytes | None] = queue.Queue()
        replies = call(iter(requests.get, None))
        requests.put(discovery_pb2.DiscoveryRequest(type_url="t").SerializeToString())
        [stream] = istiod.wait_for(lambda: istiod.open_streams(), what="a stream")
        payload = discovery_pb2.DiscoveryResponse(type_url="t", nonce="x").SerializeToString()
        sender = threading.Thread(target=stream.send, args=(payload,))
        sender.start()
        sender.join()
        assert next(replies) == payload
        requests.put(None)
        channel.close()
