"""Benchmark of the xDS proxy: overhead against a direct connection, measured in one run.

    python bench/proxy.py [--quick]

Processes: an ADS server (asyncio grpcio, its own process), ``wasm-agent proxy`` (its own
process, Unix socket) and the client (this process). The same client talks to the same server
directly and through the proxy, so the figures are ratios of one run on one machine:

- added p50/p99 round-trip latency for 1 KB and 1 MB responses (target: <= 0.15 ms p50, 1 KB)
- throughput of 1 MB responses through the proxy / direct (target: >= 0.8x)
- ECDS conversion on a cache hit, p99 (target: < 1 ms)
- agent RSS idle and peak during a cold 5 MB module fetch (targets: 50 MB, < 80 MB)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import grpc  # noqa: E402
import grpc.aio  # noqa: E402
from envoy.config.cluster.v3 import cluster_pb2  # noqa: E402
from envoy.service.discovery.v3 import discovery_pb2  # noqa: E402

from tests.e2e.agentproc import AgentProcess, free_port  # noqa: E402
from wasm_agent.xds.types import CLUSTER_TYPE, ECDS_TYPE, Flavour  # noqa: E402
from wasm_agent.xds.upstream import ADS_SERVICE, SOTW_METHOD  # noqa: E402

MAX = 256 * 1024 * 1024
OPTIONS = [("grpc.max_receive_message_length", MAX), ("grpc.max_send_message_length", MAX)]


# -- the ADS server (runs in a child process) ---------------------------------------------
def response_of(size: int, nonce: str) -> bytes:
    message = discovery_pb2.DiscoveryResponse(type_url=CLUSTER_TYPE, version_info="v", nonce=nonce)
    message.resources.add().Pack(cluster_pb2.Cluster(name="c", alt_stat_name="x" * size))
    return message.SerializeToString()


async def serve(port: int) -> None:
    """response_nonce "ping:SIZE" -> one response; "flood:SIZE:COUNT" -> COUNT responses."""
    cache: dict[int, bytes] = {}

    async def handler(requests, context) -> None:
        async for raw in requests:
            request = discovery_pb2.DiscoveryRequest.FromString(raw)
            kind, _, rest = request.response_nonce.partition(":")
            if kind == "ping":
                size = int(rest)
                await context.write(cache.setdefault(size, response_of(size, "p")))
            elif kind == "flood":
                size, count = map(int, rest.split(":"))
                data = cache.setdefault(size, response_of(size, "f"))
                for _ in range(count):
                    await context.write(data)

    server = grpc.aio.server(options=OPTIONS)
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                ADS_SERVICE,
                {"StreamAggregatedResources": grpc.stream_stream_rpc_method_handler(handler)},
            ),
        )
    )
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


# -- the client ---------------------------------------------------------------------------
class Client:
    def __init__(self, target: str) -> None:
        self.channel = grpc.aio.insecure_channel(target, options=OPTIONS)
        self.call = self.channel.stream_stream(SOTW_METHOD)()

    async def send(self, nonce: str) -> None:
        request = discovery_pb2.DiscoveryRequest(type_url=CLUSTER_TYPE, response_nonce=nonce)
        await self.call.write(request.SerializeToString())

    async def latency(self, size: int, rounds: int) -> list[float]:
        samples = []
        for _ in range(rounds):
            started = time.perf_counter()
            await self.send(f"ping:{size}")
            await self.call.read()
            samples.append((time.perf_counter() - started) * 1000)
        return samples

    async def throughput(self, size: int, count: int) -> float:
        started = time.perf_counter()
        await self.send(f"flood:{size}:{count}")
        received = 0
        for _ in range(count):
            received += len(await self.call.read())
        return received / (time.perf_counter() - started)

    async def close(self) -> None:
        self.call.cancel()
        await self.channel.close()


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def transport(direct: str, proxied: str, quick: bool) -> dict:
    results: dict = {}
    rounds = {1024: 300 if quick else 3000, 2**20: 30 if quick else 300}
    for size, count in rounds.items():
        numbers = {}
        for name, target in (("direct", direct), ("proxy", proxied)):
            client = Client(target)
            await client.latency(size, 20)  # warm-up
            samples = await client.latency(size, count)
            numbers[name] = (pct(samples, 0.5), pct(samples, 0.99))
            await client.close()
        label = "1KB" if size == 1024 else "1MB"
        results[f"latency_{label}"] = {
            "direct_p50_ms": round(numbers["direct"][0], 3),
            "proxy_p50_ms": round(numbers["proxy"][0], 3),
            "added_p50_ms": round(numbers["proxy"][0] - numbers["direct"][0], 3),
            "added_p99_ms": round(numbers["proxy"][1] - numbers["direct"][1], 3),
        }
    rates = {}
    for name, target in (("direct", direct), ("proxy", proxied)):
        client = Client(target)
        await client.throughput(2**20, 10)
        rates[name] = statistics.median(
            [await client.throughput(2**20, 40 if quick else 200) for _ in range(3)]
        )
        await client.close()
    results["throughput_1MB"] = {
        "direct_MBps": round(rates["direct"] / 1e6),
        "proxy_MBps": round(rates["proxy"] / 1e6),
        "ratio": round(rates["proxy"] / rates["direct"], 2),
    }
    return results


async def conversion_on_cache_hit(workdir: Path, quick: bool) -> dict:
    from tests.e2e.xds_config import wasm_extension
    from tests.support.istiod import sotw_response
    from tests.support.modserver import ModServer
    from tests.support.plugins_wat import header_plugin
    from tests.support.wasm import sha256_hex
    from wasm_agent.agent.settings import CacheSettings, FetchSettings
    from wasm_agent.cache import ModuleCache
    from wasm_agent.xds.ecds import WasmConverter

    module = header_plugin("bench")
    with ModServer() as mods:
        url = mods.serve("/bench.wasm", module)
        cache = ModuleCache(CacheSettings(workdir / "conv-cache"), FetchSettings())
        converter = WasmConverter(cache)
        raw = sotw_response(
            ECDS_TYPE, [wasm_extension(url, sha256_hex(module))], "v", "n"
        ).SerializeToString()
        await converter.convert(raw, Flavour.SOTW, "")  # the miss: fetch + compile
        samples = []
        for _ in range(300 if quick else 3000):
            started = time.perf_counter()
            result = await converter.convert(raw, Flavour.SOTW, "")
            samples.append((time.perf_counter() - started) * 1000)
            assert result.forward is not None
        cache.close()
    return {"p50_ms": round(pct(samples, 0.5), 3), "p99_ms": round(pct(samples, 0.99), 3)}


def rss_kib(pid: int, field: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


async def memory(agent: AgentProcess, istiod_port: int, workdir: Path) -> dict:
    """Idle RSS with one Envoy stream, then the peak while a cold 5 MB module is fetched."""
    from tests.e2e.xds_config import wasm_extension
    from tests.support.modserver import ModServer
    from tests.support.wasm import padded_module, sha256_hex

    assert agent.process is not None
    pid = agent.process.pid
    module = padded_module(5 * 2**20, seed=int(time.time()))
    client = Client(f"unix:{agent.socket}")
    await client.latency(1024, 50)
    await asyncio.sleep(1.0)
    idle = rss_kib(pid)
    with ModServer() as mods:
        url = mods.serve("/five.wasm", module)
        # a second agent-side stream to a fake istiod that sends one ECDS response
        from tests.support.istiod import FakeIstiod

        with FakeIstiod() as istiod:
            ecds_agent = AgentProcess(workdir / "mem", istiod.address, "--plaintext")
            ecds_agent.start()
            assert ecds_agent.process is not None
            ecds_pid = ecds_agent.process.pid
            ads = Client(f"unix:{ecds_agent.socket}")
            await ads.call.write(
                discovery_pb2.DiscoveryRequest(type_url=ECDS_TYPE).SerializeToString()
            )
            await asyncio.sleep(1.0)
            before = rss_kib(ecds_pid)
            istiod.set_resources(ECDS_TYPE, {"big": wasm_extension(url, sha256_hex(module))}, "1")
            peak = before
            read = asyncio.ensure_future(ads.call.read())
            while not read.done():
                peak = max(peak, rss_kib(ecds_pid))
                await asyncio.sleep(0.005)
            peak = max(peak, rss_kib(ecds_pid, "VmHWM"))
            await ads.close()
            ecds_agent.stop()
    await client.close()
    return {
        "idle_MB": round(idle / 1024, 1),
        "cold_5MB_fetch_idle_MB": round(before / 1024, 1),
        "cold_5MB_fetch_peak_MB": round(peak / 1024, 1),
    }


async def main(quick: bool) -> dict:
    workdir = Path(tempfile.mkdtemp(prefix="wa-bench-", dir="/tmp"))
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, __file__, "--serve", str(port)],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    agent = AgentProcess(workdir, f"127.0.0.1:{port}", "--plaintext")
    try:
        time.sleep(1.0)
        agent.start()
        report = await transport(f"127.0.0.1:{port}", f"unix:{agent.socket}", quick)
        report["ecds_conversion_cache_hit"] = await conversion_on_cache_hit(workdir, quick)
        report["agent_rss"] = await memory(agent, port, workdir)
    finally:
        agent.stop()
        server.terminate()
        server.wait(10)
    return report


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds (a smoke run)")
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.serve:
        asyncio.run(serve(options.serve))
    else:
        print(json.dumps(asyncio.run(main(options.quick)), indent=2))
