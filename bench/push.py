"""Big pushes: a 2,000-service mesh config through the agent and directly to real Envoy.

    python bench/push.py [--quick] [--services N] [--pushes N]

The config is generated the way istiod shapes a sidecar's view of a mesh of N services (one
HTTP port each, two DestinationRule subsets, three endpoints each): CDS
(``outbound|80|<subset>|svc-i.ns-j.svc.cluster.local`` EDS clusters with Istio's metadata and
circuit breakers), EDS (localities, endpoint metadata, weights), LDS (an outbound HTTP listener
with RDS ``80`` and a virtual-outbound listener with one TCP filter chain per service IP, as
for TCP services), RDS (route ``80``: one virtual host per service with Istio's domains, a
weighted canary route, retry policy, timeouts, decorators). Addresses are loopback (127.x)
and never dialled. Every push changes every resource (a push counter in
the metadata, route names, weights), so Envoy applies all of it.

Two stacks side by side: Envoy -> istiod (fake, grpcio) and Envoy -> ``wasm-agent proxy`` ->
istiod. Each push sends the four pre-serialized responses (CDS, EDS, LDS, RDS, in istiod's
order) on the stream and waits for Envoy's four ACKs; pushes alternate between the stacks.

- push-to-ACK time, agent / direct (median): target <= 1.05x;
- the agent's CPU time per push (all threads, ``/proc/PID/task/*/schedstat``);
- agent RSS while it passes one ~64 MiB CDS response (the default ``--max-message-size``) to a
  grpc.aio client: peak - idle <= 2.2x the message; the same for the bare grpc.aio forwarder
  of ``bench/proxy.py`` (the floor of a grpcio forwarder).

Ends with one JSON line ``{"bench": "push", "ratios": ..., "targets": ..., "met": ...}``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import grpc  # noqa: E402
import grpc.aio  # noqa: E402
from envoy.config.cluster.v3 import cluster_pb2  # noqa: E402
from envoy.config.core.v3 import (  # noqa: E402
    address_pb2,
    base_pb2,
    config_source_pb2,
    health_check_pb2,
)
from envoy.config.endpoint.v3 import endpoint_pb2  # noqa: E402
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2  # noqa: E402
from envoy.config.route.v3 import route_pb2  # noqa: E402
from envoy.extensions.filters.http.router.v3 import router_pb2  # noqa: E402
from envoy.extensions.filters.network.http_connection_manager.v3 import (  # noqa: E402
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2  # noqa: E402
from envoy.service.discovery.v3 import discovery_pb2  # noqa: E402
from google.protobuf import any_pb2, duration_pb2, struct_pb2, wrappers_pb2  # noqa: E402

from bench.proxy import Client, rss_kib  # noqa: E402
from tests.e2e.agentproc import AgentProcess  # noqa: E402
from tests.support.envoy import EnvoyProcess  # noqa: E402
from tests.support.istiod import FakeIstiod, FakeStream  # noqa: E402
from wasm_agent.demo.envoy import bootstrap as demo_bootstrap  # noqa: E402
from wasm_agent.xds.grpc_core import LOW_LATENCY_EXPERIMENTS  # noqa: E402
from wasm_agent.xds.types import (  # noqa: E402
    CLUSTER_TYPE,
    ENDPOINT_TYPE,
    LISTENER_TYPE,
    ROUTE_TYPE,
)

TYPES = (CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, ROUTE_TYPE)  # istiod's push order
TARGETS = {"push_to_ack": "<= 1.05", "rss_64mib_over_message": "<= 2.2"}
RETRY_ON = "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes"
BIG = 64 * 1024 * 1024 - 64 * 1024  # just under the agent's default --max-message-size


# -- the mesh config ------------------------------------------------------------------------
def _host(i: int) -> str:
    return f"svc-{i}.ns-{i % 40}.svc.cluster.local"


def _struct(value: dict[str, Any]) -> struct_pb2.Struct:
    out = struct_pb2.Struct()
    out.update(value)
    return out


def _duration(seconds: float) -> duration_pb2.Duration:
    out = duration_pb2.Duration()
    out.FromNanoseconds(int(seconds * 1e9))
    return out


SUBSETS = ("", "v1", "v2")  # the service, and two DestinationRule subsets (as istiod names them)


def cluster(i: int, push: int, subset: str = "") -> cluster_pb2.Cluster:
    host = _host(i)
    name = f"outbound|80|{subset}|{host}"
    c = cluster_pb2.Cluster(
        name=name,
        type=cluster_pb2.Cluster.EDS,
        connect_timeout=_duration(10),
        lb_policy=cluster_pb2.Cluster.LEAST_REQUEST,
    )
    c.eds_cluster_config.service_name = name
    c.eds_cluster_config.eds_config.ads.SetInParent()
    c.eds_cluster_config.eds_config.initial_fetch_timeout.CopyFrom(_duration(0))
    c.eds_cluster_config.eds_config.resource_api_version = config_source_pb2.V3
    for priority in (base_pb2.DEFAULT, base_pb2.HIGH):
        t = c.circuit_breakers.thresholds.add(priority=priority)
        for field in ("max_connections", "max_pending_requests", "max_requests", "max_retries"):
            getattr(t, field).value = 4294967295
        t.track_remaining = True
    c.common_lb_config.locality_weighted_lb_config.SetInParent()
    c.metadata.filter_metadata["istio"].CopyFrom(
        _struct(
            {
                "services": [{"host": host, "name": f"svc-{i}", "namespace": f"ns-{i % 40}"}],
                "default_original_port": 80,
                "config": f"/apis/networking.istio.io/v1/namespaces/ns-{i % 40}"
                f"/destination-rule/svc-{i}",
                "push": push,
            }
        )
    )
    c.alt_stat_name = f"{name};"
    return c


def endpoints(i: int, push: int, subset: str = "") -> endpoint_pb2.ClusterLoadAssignment:
    name = f"outbound|80|{subset}|{_host(i)}"
    cla = endpoint_pb2.ClusterLoadAssignment(cluster_name=name)
    for zone in range(3):
        locality = cla.endpoints.add()
        locality.locality.region, locality.locality.zone = "us-east1", f"us-east1-{'abc'[zone]}"
        locality.load_balancing_weight.value = 1 + push % 7
        ep = locality.lb_endpoints.add()
        ep.endpoint.address.socket_address.address = f"127.{16 + zone}.{i // 250}.{i % 250 + 1}"
        ep.endpoint.address.socket_address.port_value = 8080
        ep.health_status = health_check_pb2.HEALTHY
        ep.load_balancing_weight.value = 1
        ep.metadata.filter_metadata["istio"].CopyFrom(
            _struct(
                {
                    "workload": f"svc-{i}-v1;ns-{i % 40};svc-{i};v1;cluster-{zone}",
                    "push": push,
                }
            )
        )
        ep.metadata.filter_metadata["envoy.transport_socket_match"].CopyFrom(
            _struct({"tlsMode": "istio"})
        )
    return cla


def _hcm_filter(manager: hcm_pb2.HttpConnectionManager) -> listener_components_pb2.Filter:
    f = listener_components_pb2.Filter(name="envoy.filters.network.http_connection_manager")
    f.typed_config.Pack(manager)
    return f


def listeners(n: int, push: int) -> dict[str, listener_pb2.Listener]:
    """``0.0.0.0_80`` (HTTP, RDS ``80``) and ``virtualOutbound`` (a TCP chain per service IP);
    both bound on 127.0.0.1 with a port from the OS."""
    manager = hcm_pb2.HttpConnectionManager(stat_prefix="outbound_0.0.0.0_80")
    manager.rds.route_config_name = "80"
    manager.rds.config_source.ads.SetInParent()
    manager.rds.config_source.resource_api_version = config_source_pb2.V3
    manager.http_filters.add(name="envoy.filters.http.router").typed_config.Pack(
        router_pb2.Router()
    )
    manager.use_remote_address.value = False
    manager.normalize_path.value = True
    manager.request_id_extension.SetInParent()
    http = listener_pb2.Listener(name="0.0.0.0_80", address=_local(), traffic_direction=2)
    http.filter_chains.add().filters.append(_hcm_filter(manager))
    http.metadata.filter_metadata["istio"].CopyFrom(_struct({"push": push}))
    outbound = listener_pb2.Listener(name="virtualOutbound", address=_local(), traffic_direction=2)
    for i in range(n):
        chain = outbound.filter_chains.add(name=f"{_host(i)}:9000")
        ip = f"127.32.{i // 250}.{i % 250 + 1}"
        chain.filter_chain_match.prefix_ranges.add(
            address_prefix=ip, prefix_len=wrappers_pb2.UInt32Value(value=32)
        )
        chain.filter_chain_match.destination_port.value = 9000
        proxy = tcp_proxy_pb2.TcpProxy(
            stat_prefix=f"outbound|9000||{_host(i)}", cluster=f"outbound|80||{_host(i)}"
        )
        proxy.idle_timeout.CopyFrom(_duration(3600 + push % 60))
        chain.filters.add(name="envoy.filters.network.tcp_proxy").typed_config.Pack(proxy)
        chain.metadata.filter_metadata["pilot_meta"].CopyFrom(
            _struct({"original_listener_name": f"{ip}_9000", "push": push})
        )
    return {"0.0.0.0_80": http, "virtualOutbound": outbound}


def _local() -> address_pb2.Address:
    return address_pb2.Address(
        socket_address=address_pb2.SocketAddress(address="127.0.0.1", port_value=0)
    )


def routes(n: int, push: int) -> route_pb2.RouteConfiguration:
    config = route_pb2.RouteConfiguration(name="80", validate_clusters=wrappers_pb2.BoolValue())
    for i in range(n):
        host, short = _host(i), f"svc-{i}"
        vh = config.virtual_hosts.add(name=f"{host}:80")
        ns = f"ns-{i % 40}"
        vh.domains.extend(
            [host, f"{host}:80", short, f"{short}:80", f"{short}.{ns}", f"{short}.{ns}:80",
             f"{short}.{ns}.svc", f"{short}.{ns}.svc:80", f"127.48.{i // 250}.{i % 250 + 1}",
             f"127.48.{i // 250}.{i % 250 + 1}:80"]
        )  # fmt: skip
        canary = vh.routes.add(name=f"canary-{push}")
        canary.match.prefix = "/"
        canary.match.headers.add(name="x-canary").string_match.exact = "true"
        canary.route.weighted_clusters.clusters.add(
            name=f"outbound|80|v2|{host}", weight=wrappers_pb2.UInt32Value(value=90)
        )
        canary.route.weighted_clusters.clusters.add(
            name=f"outbound|80|v1|{host}", weight=wrappers_pb2.UInt32Value(value=10)
        )
        canary.route.timeout.CopyFrom(_duration(0))
        route = vh.routes.add(name=f"default-{push}")
        route.match.prefix = "/"
        route.route.cluster = f"outbound|80||{host}"
        route.route.timeout.CopyFrom(_duration(0))
        retry = route.route.retry_policy
        retry.retry_on = (
            "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes"
        )
        retry.num_retries.value = 2
        retry.host_selection_retry_max_attempts = 5
        retry.retriable_status_codes.append(503)
        route.route.max_stream_duration.max_stream_duration.CopyFrom(_duration(0))
        route.decorator.operation = f"{host}:80/*"
        route.metadata.filter_metadata["istio"].CopyFrom(_struct({"push": push}))
        vh.include_request_attempt_count = True
    return config


def _response(type_url: str, resources: list[Any], version: str, nonce: str) -> bytes:
    message = discovery_pb2.DiscoveryResponse(version_info=version, type_url=type_url, nonce=nonce)
    for resource in resources:
        packed = any_pb2.Any()
        packed.Pack(resource)
        message.resources.append(packed)
    return message.SerializeToString()


def mesh(n: int, push: int) -> dict[str, list[Any]]:
    """The resources of each type for push number ``push``."""
    return {
        CLUSTER_TYPE: [cluster(i, push, subset) for i in range(n) for subset in SUBSETS],
        ENDPOINT_TYPE: [endpoints(i, push, subset) for i in range(n) for subset in SUBSETS],
        LISTENER_TYPE: list(listeners(n, push).values()),
        ROUTE_TYPE: [routes(n, push)],
    }


def serialized(n: int, push: int) -> dict[str, bytes]:
    """The four responses of push ``push``, nonce ``p<push>-<type>``."""
    return {
        t: _response(t, items, f"v{push}", f"p{push}-{t.rsplit('.', 1)[1]}")
        for t, items in mesh(n, push).items()
    }


# -- the stacks -----------------------------------------------------------------------------
def cpu_seconds(pid: int) -> float:
    """CPU time of a process, all its live threads (``schedstat``, ns precision)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            total += int((task / "schedstat").read_text().split()[0])
    return total / 1e9


def permissive_istiod() -> FakeIstiod:
    """A started fake istiod that accepts keepalive pings every 15 s without data, as istiod
    does (its gRPC keepalive enforcement policy: MinTime 15 s, PermitWithoutStream). grpcio's
    default (5 min) answers the agent's 30 s pings on an idle stream with GOAWAY
    ``too_many_pings``."""
    real = grpc.aio.server

    def server(*args: Any, options: Any = (), **kwargs: Any) -> grpc.aio.Server:
        extra = [
            ("grpc.http2.min_ping_interval_without_data_ms", 15000),
            ("grpc.keepalive_permit_without_calls", 1),
        ]
        return real(*args, options=[*options, *extra], **kwargs)

    grpc.aio.server = server  # only while FakeIstiod.start builds its server
    try:
        return FakeIstiod().start()
    finally:
        grpc.aio.server = real


class Stack:
    """Fake istiod, maybe the agent, and Envoy with ADS to either."""

    def __init__(self, name: str, workdir: Path, agent: bool) -> None:
        self.name = name
        self.istiod = permissive_istiod()
        self.agent: AgentProcess | None = None
        config = demo_bootstrap(workdir / "unused.sock", 9)
        config["dynamic_resources"]["cds_config"] = {"ads": {}, "resource_api_version": "V3"}
        xds = config["static_resources"]["clusters"][0]
        address = xds["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
        if agent:
            self.agent = AgentProcess(
                workdir / "agent", self.istiod.address, "--plaintext", "--log-level", "warning"
            ).start()
            address["address"] = {"pipe": {"path": str(self.agent.socket)}}
        else:
            port = int(self.istiod.address.rsplit(":", 1)[1])
            address["address"] = {"socket_address": {"address": "127.0.0.1", "port_value": port}}
        self.envoy = EnvoyProcess(
            config, workdir / "envoy", log_level="warning", extra_args=["--drain-time-s", "1"]
        ).start()

    def stream(self, timeout: float = 30.0) -> FakeStream:
        streams: list[FakeStream] = self.istiod.wait_for(
            lambda: [s for s in self.istiod.open_streams() if set(TYPES) <= s.subscribed],
            timeout,
            "an ADS stream subscribed to CDS, EDS, LDS and RDS",
        )
        return streams[-1]  # the newest: a stream Envoy or the agent replaced may linger

    def push(self, responses: dict[str, bytes], nonces: list[str], timeout: float) -> float:
        """Send the four responses; seconds until Envoy ACKed all four."""
        stream = self.stream()
        seen = len(stream.requests)
        started = time.perf_counter()
        for type_url in TYPES:
            self.istiod.send_raw(responses[type_url], stream)  # onto istiod's own loop
        waiting = set(nonces)
        deadline = started + timeout
        while waiting:
            for request in stream.requests[seen:]:
                seen += 1
                if request.response_nonce in waiting:
                    if request.HasField("error_detail"):
                        raise RuntimeError(f"{self.name}: NACK {request.error_detail.message}")
                    waiting.discard(request.response_nonce)
            if time.perf_counter() > deadline:
                tail = self.agent.logs()[-3000:] if self.agent is not None else ""
                streams = len(self.istiod.open_streams())
                raise TimeoutError(
                    f"{self.name}: no ACK for {sorted(waiting)} in {timeout}s"
                    f" ({streams} open streams at istiod)\n{tail}\n{self.envoy.logs()[-3000:]}"
                )
            time.sleep(0.001)
        return time.perf_counter() - started

    def settle(self, timeout: float = 60.0) -> None:
        """Until Envoy has used under 10% of a CPU for 200 ms (warming and draining done)."""
        assert self.envoy.process is not None
        pid = self.envoy.process.pid
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            before = cpu_seconds(pid)
            time.sleep(0.2)
            if cpu_seconds(pid) - before < 0.02:
                return

    def close(self) -> None:
        self.envoy.stop()
        if self.agent is not None:
            self.agent.stop()
        self.istiod.stop()


def initial(stack: Stack, n: int) -> None:
    """Push 0 through the snapshot (Envoy subscribes to each type, then ACKs it)."""
    for type_url, items in mesh(n, 0).items():
        stack.istiod.set_resources(type_url, {str(k): r for k, r in enumerate(items)}, "v0")
    stack.envoy.wait_for(
        lambda: (
            {r.type_url for r in stack.istiod.all_requests() if r.version_info == "v0"}
            >= set(TYPES)
        ),
        120,
        "Envoy ACKs of push 0",
    )


def pushes(workdir: Path, n: int, count: int, log: Any) -> dict[str, float]:
    """``count`` pushes to each stack, alternating; medians, agent CPU per push."""
    made: list[Stack] = []
    try:
        direct = Stack("direct", workdir / "direct", agent=False)
        made.append(direct)
        agent = Stack("agent", workdir / "agent", agent=True)
        made.append(agent)
        for stack in made:
            initial(stack, n)
        assert agent.agent is not None and agent.agent.process is not None
        pid = agent.agent.process.pid
        times: dict[str, list[float]] = {"direct": [], "agent": []}
        cpu: list[float] = []
        size = 0
        for push in range(1, count + 1):
            responses = serialized(n, push)
            size = sum(len(r) for r in responses.values())
            nonces = [f"p{push}-{t.rsplit('.', 1)[1]}" for t in TYPES]
            order = made if push % 2 else made[::-1]
            for stack in order:
                before = cpu_seconds(pid)
                times[stack.name].append(stack.push(responses, nonces, timeout=300))
                if stack is agent:
                    cpu.append(cpu_seconds(pid) - before)
                stack.settle()  # Envoy finishes warming before the other stack's push
            log(
                f"push {push}: {size / 1e6:.1f} MB, direct {times['direct'][-1] * 1000:.0f} ms,"
                f" agent {times['agent'][-1] * 1000:.0f} ms, agent CPU {cpu[-1] * 1000:.0f} ms"
            )
        sizes = {t.rsplit(".", 1)[1]: len(r) for t, r in serialized(n, 0).items()}
    finally:
        for stack in made:
            stack.close()
    d, a = statistics.median(times["direct"]), statistics.median(times["agent"])
    return {
        "direct_ms": round(d * 1000, 1),
        "agent_ms": round(a * 1000, 1),
        "ratio": round(a / d, 3),
        "agent_cpu_ms_per_push": round(statistics.median(cpu) * 1000, 1),
        "push_MB": round(size / 1e6, 2),
        "sizes_MB": {k: round(v / 1e6, 2) for k, v in sizes.items()},
    }


# -- RSS with a 64 MiB response -------------------------------------------------------------
def big_response() -> bytes:
    """One CDS response of about ``BIG`` bytes: istiod-shaped clusters, many of them."""
    one = cluster(0, 0).ByteSize() + 8
    count = BIG // one
    data = _response(CLUSTER_TYPE, [cluster(i, 0) for i in range(count)], "big", "big")
    while len(data) > BIG:
        count -= max(1, (len(data) - BIG) // one)
        data = _response(CLUSTER_TYPE, [cluster(i, 0) for i in range(count)], "big", "big")
    return data


async def rss(workdir: Path, data: bytes, floor: bool = False) -> dict[str, float]:
    """RSS idle (one client stream) and peak while one big response passes: of the agent, or
    with ``floor`` of the bare grpc.aio forwarder (``bench/proxy.py --forward``)."""
    with FakeIstiod() as istiod:
        if floor:
            agent = Forwarder(workdir / "floor.sock", istiod.address)
        else:
            agent = AgentProcess(workdir / "rss", istiod.address, "--plaintext")
        agent.start()
        assert agent.process is not None
        pid = agent.process.pid
        try:
            client = Client(f"unix:{agent.socket}")
            request = discovery_pb2.DiscoveryRequest(type_url=CLUSTER_TYPE)
            await client.call.write(request.SerializeToString())
            stream = istiod.wait_for(istiod.open_streams, 10, "the agent's stream")[0]
            await asyncio.sleep(2.0)
            idle = rss_kib(pid) * 1024
            istiod.send_raw(data, stream)  # onto istiod's own loop
            read = asyncio.ensure_future(client.call.read())
            peak = idle
            while not read.done():
                peak = max(peak, rss_kib(pid) * 1024)
                await asyncio.sleep(0.002)
            received = len(await read)
            peak = max(peak, rss_kib(pid, "VmHWM") * 1024)
            await client.close()
        finally:
            agent.stop()
    assert received == len(data), (received, len(data))
    return {
        "message_MiB": round(len(data) / 2**20, 2),
        "idle_MiB": round(idle / 2**20, 1),
        "peak_MiB": round(peak / 2**20, 1),
        "ratio": round((peak - idle) / len(data), 3),
    }


class Forwarder:
    """``bench/proxy.py --forward``: the smallest grpc.aio forwarder, as the RSS floor."""

    def __init__(self, socket: Path, upstream: str) -> None:
        self.socket = socket
        self.upstream = upstream
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {"GRPC_EXPERIMENTS": LOW_LATENCY_EXPERIMENTS, **os.environ, "PYTHONPATH": str(ROOT)}
        self.process = subprocess.Popen(
            [sys.executable, str(ROOT / "bench" / "proxy.py"), "--forward", self.upstream,
             str(self.socket)],
            env=env,
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while not self.socket.exists():
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise RuntimeError("the bare forwarder did not start")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)


def met(value: float, target: str) -> bool:
    op, bound = target.split()
    return value <= float(bound) if op == "<=" else value >= float(bound)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 pushes")
    parser.add_argument("--services", type=int, default=2000)
    parser.add_argument("--pushes", type=int, default=0, help="pushes per stack (default 9)")
    options = parser.parse_args()
    count = options.pushes or (3 if options.quick else 9)
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs", flush=True)
    with tempfile.TemporaryDirectory(prefix="wa-push-") as tmp:
        timing = pushes(Path(tmp), options.services, count, lambda s: print(s, flush=True))
        print(
            f"{options.services} services, {timing['push_MB']} MB per push {timing['sizes_MB']}:"
            f" push-to-ACK direct {timing['direct_ms']} ms, through the agent"
            f" {timing['agent_ms']} ms ({timing['ratio']}x, target {TARGETS['push_to_ack']}x);"
            f" agent CPU {timing['agent_cpu_ms_per_push']} ms per push",
            flush=True,
        )
        data = big_response()
        memory = asyncio.run(rss(Path(tmp), data))
        floor = asyncio.run(rss(Path(tmp), data, floor=True))
        memory["floor_bare_forwarder"] = floor
        print(
            f"{memory['message_MiB']} MiB response: agent RSS idle {memory['idle_MiB']} MiB,"
            f" peak {memory['peak_MiB']} MiB; (peak - idle) / message = {memory['ratio']}x"
            f" (target {TARGETS['rss_64mib_over_message']}x); bare grpc.aio forwarder:"
            f" idle {floor['idle_MiB']} MiB, peak {floor['peak_MiB']} MiB, {floor['ratio']}x",
            flush=True,
        )
    ratios = {"push_to_ack": timing["ratio"], "rss_64mib_over_message": memory["ratio"]}
    result = {
        "bench": "push",
        "ratios": ratios,
        "push": timing,
        "rss": memory,
        "load_average": round(os.getloadavg()[0], 1),
        "targets": TARGETS,
        "met": all(met(ratios[k], t) for k, t in TARGETS.items()),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
