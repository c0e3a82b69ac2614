"""ECDS conversion and wire-scanner costs, as ratios against baselines measured in the same run.

Run: ``python bench/convert.py`` (from the repository root). Prints:

1. ECDS cache-hit conversion (``plan_response`` + ``decide`` with every module already cached,
   i.e. parse, rewrite, serialize) p50/p99 for a 1-resource and a 5-resource response, against
   a bare upb parse + serialize of the same response. Target: p99 well under 1 ms.
2. Routing a large CDS response: ``response_type_url`` (the wire scanner) and
   ``plan_response`` (pass-through) against a upb parse + serialize of the outer message and a
   full decode of every Cluster.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from envoy.config.cluster.v3 import cluster_pb2
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import struct_pb2

from tests.xds.ecds_builders import (
    SECRET,
    extension,
    module,
    sotw_response,
    typed_struct,
    wasm_filter,
)
from wasm_agent.xds.convert import FailureMode
from wasm_agent.xds.decide import Forward, decide, plan_response
from wasm_agent.xds.types import CLUSTER_TYPE, Flavour
from wasm_agent.xds.wire import response_type_url

ENV = {
    "ISTIO_META_WASM_IMAGE_PULL_SECRET": SECRET,
    "ISTIO_META_WASM_IMAGE_PULL_POLICY": "IfNotPresent",
    "ISTIO_META_WASM_PLUGIN_RESOURCE_VERSION": "4711",
    "POD_NAMESPACE": "default",
}


def samples(fn: Callable[[], object], count: int) -> list[float]:
    """Per-call wall times in microseconds (after a warm-up)."""
    return _timed(fn, count, time.perf_counter_ns)


def cpu_samples(fn: Callable[[], object], count: int) -> list[float]:
    """Per-call CPU times of this thread in microseconds (immune to other processes' load)."""
    return _timed(fn, count, time.thread_time_ns)


def _timed(fn: Callable[[], object], count: int, clock: Callable[[], int]) -> list[float]:
    for _ in range(min(count, 200)):
        fn()
    out = []
    for _ in range(count):
        start = clock()
        fn()
        out.append((clock() - start) / 1000)
    return out


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def plugin(index: int, network: bool = False):
    config = wasm_filter(network=network, env=ENV, url=f"oci://registry.example/p{index}:1.0")
    plugin_config = struct_pb2.Struct()
    plugin_config.update({"rules": [{"header": f"x-h{i}", "value": "v" * 20} for i in range(8)]})
    config.config.configuration.Pack(plugin_config)
    return config


def ecds_case(count: int, typed_structs: int = 0) -> tuple[bytes, dict]:
    """``count`` Wasm resources (every third a network filter), the first ``typed_structs`` of
    them wrapped in a TypedStruct (EnvoyFilter's legacy form; istiod's WasmPlugins are direct)."""
    resources = []
    for i in range(count):
        body = plugin(i, network=i % 3 == 2)
        resources.append(
            extension(f"ns.plugin-{i}", typed_struct(body) if i < typed_structs else body)
        )
    data = sotw_response(resources).SerializeToString()
    outcomes = {i: module(f"{i:064x}") for i in range(count)}
    return data, outcomes


def bench_ecds(count: int, iterations: int, typed_structs: int = 0) -> None:
    data, outcomes = ecds_case(count, typed_structs)

    def convert() -> bytes:
        plan = plan_response(data, Flavour.SOTW)
        action = decide(plan, outcomes, FailureMode.NACK, "v6")
        assert isinstance(action, Forward)
        return action.data

    def baseline() -> bytes:
        return discovery_pb2.DiscoveryResponse.FromString(data).SerializeToString()

    assert SECRET.encode() not in convert()
    ours, base = samples(convert, iterations), samples(baseline, iterations)
    cpu = cpu_samples(convert, iterations)
    p50, p99, b50, b99 = pct(ours, 0.5), pct(ours, 0.99), pct(base, 0.5), pct(base, 0.99)
    kind = f", {typed_structs} as TypedStruct" if typed_structs else ""
    print(
        f"ECDS cache-hit conversion, {count} resource(s){kind}, {len(data)} B: "
        f"p50 {p50:.1f} us, p99 {p99:.1f} us (CPU p99 {pct(cpu, 0.99):.1f} us); "
        f"baseline upb parse+serialize p50 {b50:.1f} us, p99 {b99:.1f} us; "
        f"ratio p50 {p50 / b50:.1f}x"
    )


def large_cds(clusters: int) -> bytes:
    response = discovery_pb2.DiscoveryResponse(version_info="1", type_url=CLUSTER_TYPE, nonce="n")
    for i in range(clusters):
        cluster = cluster_pb2.Cluster(name=f"outbound|8080||svc-{i}.ns.svc.cluster.local")
        cluster.type = cluster_pb2.Cluster.EDS
        cluster.eds_cluster_config.service_name = cluster.name
        cluster.eds_cluster_config.eds_config.ads.SetInParent()
        cluster.connect_timeout.seconds = 10
        cluster.circuit_breakers.thresholds.add().max_connections.value = 4294967295
        tls = tls_pb2.UpstreamTlsContext(sni=f"outbound_.8080_._.svc-{i}.ns.svc.cluster.local")
        for name in ("default", "ROOTCA"):
            tls.common_tls_context.tls_certificate_sds_secret_configs.add(name=name)
        tls.common_tls_context.alpn_protocols.extend(["istio-peer-exchange", "istio"])
        match = cluster.transport_socket_matches.add(name=f"tlsMode-istio-{i}")
        match.match.update({"tlsMode": "istio"})
        match.transport_socket.name = "envoy.transport_sockets.tls"
        match.transport_socket.typed_config.Pack(tls)
        cluster.metadata.filter_metadata["istio"].update(
            {"services": [{"host": cluster.name, "name": f"svc-{i}", "namespace": "ns"}] * 8}
        )
        response.resources.add().Pack(cluster)
    return response.SerializeToString()


def bench_scanner(clusters: int, iterations: int) -> None:
    data = large_cds(clusters)

    def outer() -> bytes:
        return discovery_pb2.DiscoveryResponse.FromString(data).SerializeToString()

    def full() -> None:
        response = discovery_pb2.DiscoveryResponse.FromString(data)
        for resource in response.resources:
            cluster_pb2.Cluster.FromString(resource.value)

    assert response_type_url(data) == CLUSTER_TYPE
    scan = pct(samples(lambda: response_type_url(data), iterations), 0.5)
    plan = pct(samples(lambda: plan_response(data, Flavour.SOTW), iterations), 0.5)
    parse = pct(samples(outer, iterations), 0.5)
    decode = pct(samples(full, max(3, iterations // 5)), 0.5)
    size = len(data) / 1e6
    print(f"CDS response, {clusters} clusters, {size:.1f} MB (p50):")
    print(f"  wire scanner response_type_url   {scan / 1000:8.2f} ms")
    print(f"  plan_response (pass-through)     {plan / 1000:8.2f} ms")
    print(f"  baseline upb parse+serialize     {parse / 1000:8.2f} ms  ({parse / scan:.1f}x scan)")
    print(
        f"  full decode of every Cluster     {decode / 1000:8.2f} ms  ({decode / scan:.1f}x scan)"
    )


def main() -> None:
    quick = "--quick" in sys.argv
    bench_ecds(1, 500 if quick else 5000)
    bench_ecds(5, 300 if quick else 2000)
    bench_ecds(5, 300 if quick else 2000, typed_structs=1)
    bench_scanner(3700, 5 if quick else 30)


if __name__ == "__main__":
    main()
