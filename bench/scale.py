"""Registry load and agent cost per node: the measured inputs of ``docs/scale.md``.

Run: ``python bench/scale.py [--agents N] [--sizes 1,5] [--repeats R] [--json]`` from the
repository root (needs Debian ``docker-registry``; everything on 127.0.0.1 in a temp dir).

What it measures, against a real docker-registry holding 1 MB and 5 MB *code* modules
(``tests/support/wasm.code_module``: real functions, so compiling costs what a plugin costs):

1. one cold fetch (``wasm-agent prefetch`` process, empty cache: OCI manifest + blob, digest
   checks, compile in the worker): wall and CPU time, registry requests and bytes served;
2. a cache hit (the same command, module cached): wall time;
3. N agents on one node fetching the same new version at once (a rollout), sharing one cache
   directory (the DaemonSet/hostPath node cache) vs one cache each: registry requests, blob
   downloads, bytes, time until the last agent has the module, CPU time of all agents;
4. the same N agents (one cache each) through a pull-through mirror (docker-registry in proxy
   mode in front of the origin), by tag and by digest: what the origin still sees;
5. agent memory per pod: ``wasm-agent proxy`` processes (one Envoy stream each) idle, then
   after converting a 5 MB module: RSS and PSS (PSS splits shared pages among the agents).

Registry figures come from its access log (``"GET /v2/... HTTP/1.1" 200 <bytes>``): requests
of every kind the agents caused, and the bytes of GET responses.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.oci_push import RawPusher  # noqa: E402
from tests.support.registry import Registry  # noqa: E402
from tests.support.wasm import code_module  # noqa: E402

MB = 1024 * 1024
REPO = "scale/plugin"
_LINE = re.compile(
    r'^\S+ - \S+ \[[^\]]+\] "(?P<method>[A-Z]+) (?P<path>\S+) HTTP/[\d.]+" '
    r"(?P<status>\d+) (?P<bytes>\d+)"
)


class MirrorRegistry(Registry):
    """docker-registry as a pull-through cache of ``remote`` (``proxy.remoteurl``)."""

    def __init__(self, directory: Path, remote: str) -> None:
        super().__init__(directory)
        self.remote = remote

    def _config(self) -> str:
        return super()._config() + f"proxy:\n  remoteurl: {self.remote}\n"


@dataclass
class Traffic:
    """What a registry served between two marks of its access log."""

    requests: int = 0  # every request, /v2/ pings included
    manifest_requests: int = 0  # GET or HEAD of a manifest
    blob_gets: int = 0
    bytes: int = 0  # body bytes of GET responses

    @classmethod
    def since(cls, registry: Registry, mark: int) -> Traffic:
        registry.sync_log()
        out = cls()
        for line in registry.log_path.read_bytes()[mark:].decode(errors="replace").splitlines():
            match = _LINE.match(line)
            if not match or "/_log_marker/" in match["path"]:
                continue
            out.requests += 1
            if "/manifests/" in match["path"]:
                out.manifest_requests += 1
            if match["method"] == "GET":
                out.bytes += int(match["bytes"])
                if "/blobs/" in match["path"]:
                    out.blob_gets += 1
        return out


def mark(registry: Registry) -> int:
    registry.sync_log()
    return registry.log_path.stat().st_size


def prefetch_args(url: str, cache: Path, sha: str, insecure: list[str]) -> list[str]:
    args = [sys.executable, "-m", "wasm_agent", "prefetch", url, "--cache-dir", str(cache)]
    for host in insecure:
        args += ["--insecure-registry", host]
    return [*args, "--sha256", sha]


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_agents(commands: list[list[str]]) -> tuple[float, float]:
    """Start every command at once; (seconds until the last one finished, CPU seconds)."""
    cpu = children_cpu()
    started = time.perf_counter()
    procs = [
        subprocess.Popen(c, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        for c in commands
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=600)
        if proc.returncode != 0:
            raise RuntimeError(f"prefetch failed ({proc.returncode}): {err.decode()[-2000:]}")
    return time.perf_counter() - started, children_cpu() - cpu


def one_fetch(registry: Registry, size_mb: int, sha: str, tag: str, work: Path, repeats: int):
    url = registry.oci_url(REPO, tag)
    colds, cpus, traffic = [], [], None
    for run in range(repeats):
        before = mark(registry)
        wall, cpu = run_agents(
            [prefetch_args(url, work / f"one-{tag}-{run}", sha, [registry.host])]
        )
        colds.append(wall)
        cpus.append(cpu)
        traffic = Traffic.since(registry, before)
    warm_cache = work / f"one-{tag}-0"
    hits = [
        run_agents([prefetch_args(url, warm_cache, sha, [registry.host])])[0]
        for _ in range(max(5, repeats))
    ]
    return {
        "module_MB": size_mb,
        "cold_s": round(statistics.median(colds), 2),
        "cold_cpu_s": round(statistics.median(cpus), 2),
        "hit_ms": round(statistics.median(hits) * 1000),
        "per_fetch": asdict(traffic),
    }


def node_rollout(registry: Registry, sha: str, tag: str, work: Path, agents: int, shared: bool):
    url = registry.oci_url(REPO, tag)
    name = f"node-{tag}-{'shared' if shared else 'separate'}"
    caches = [work / name / ("shared" if shared else f"agent-{i}") for i in range(agents)]
    before = mark(registry)
    wall, cpu = run_agents([prefetch_args(url, c, sha, [registry.host]) for c in caches])
    return {
        "agents": agents,
        "cache": "shared" if shared else "separate",
        "converge_s": round(wall, 2),
        "cpu_s": round(cpu, 1),
        "registry": asdict(Traffic.since(registry, before)),
    }


def mirrored_rollout(origin: Registry, sha: str, digest: str, tag: str, work: Path, agents: int):
    out = {}
    for how in ("tag", "digest"):
        with MirrorRegistry(work / f"mirror-{how}", origin.url) as mirror:
            url = mirror.oci_url(REPO, tag) if how == "tag" else mirror.oci_url(REPO, digest=digest)
            origin_mark, mirror_mark = mark(origin), mark(mirror)
            caches = [work / f"mirror-{how}-{i}" for i in range(agents)]
            insecure = [mirror.host]
            wall, _ = run_agents([prefetch_args(url, c, sha, insecure) for c in caches])
            # a second wave (a later rollout step or pod restarts) through the warm mirror
            caches2 = [work / f"mirror-{how}-again-{i}" for i in range(agents)]
            first_origin = Traffic.since(origin, origin_mark)
            first_mirror = Traffic.since(mirror, mirror_mark)
            origin_mid, mirror_mid = mark(origin), mark(mirror)
            wall2, _ = run_agents([prefetch_args(url, c, sha, insecure) for c in caches2])
            out[how] = {
                "agents": agents,
                "cache": "separate",
                "converge_s": round(wall, 2),
                "origin": asdict(first_origin),
                "mirror": asdict(first_mirror),
                "second_wave_converge_s": round(wall2, 2),
                "second_wave_origin": asdict(Traffic.since(origin, origin_mid)),
                "second_wave_mirror": asdict(Traffic.since(mirror, mirror_mid)),
            }
    return out


def _status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _pss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    return 0


async def agent_memory(work: Path, count: int, module_url: str, sha: str) -> dict:
    """``count`` proxy processes, one Envoy (ADS) stream each: idle, then holding a 5 MB module."""
    import grpc.aio
    from envoy.service.discovery.v3 import discovery_pb2

    from tests.e2e.agentproc import AgentProcess
    from tests.e2e.xds_config import wasm_extension
    from tests.support.istiod import FakeIstiod
    from wasm_agent.xds.types import ECDS_TYPE
    from wasm_agent.xds.upstream import SOTW_METHOD

    with FakeIstiod() as istiod:
        agents = [
            AgentProcess(work / f"agent-{i}", istiod.address, "--plaintext") for i in range(count)
        ]
        channels, calls = [], []
        try:
            for agent in agents:
                agent.start()
                channel = grpc.aio.insecure_channel(f"unix:{agent.socket}")
                call = channel.stream_stream(SOTW_METHOD)()
                request = discovery_pb2.DiscoveryRequest(type_url=ECDS_TYPE)
                await call.write(request.SerializeToString())
                channels.append(channel)
                calls.append(call)
            await asyncio.sleep(3.0)
            pids = [a.process.pid for a in agents if a.process is not None]
            idle_rss = [_status_kib(p, "VmRSS") for p in pids]
            idle_pss = [_pss_kib(p) for p in pids]
            extension = wasm_extension(module_url, sha)
            istiod.set_resources(ECDS_TYPE, {"plugin": extension}, "1")
            for call in calls:
                await asyncio.wait_for(call.read(), 600)
            await asyncio.sleep(2.0)
            held_rss = [_status_kib(p, "VmRSS") for p in pids]
            held_pss = [_pss_kib(p) for p in pids]
            peak = [_status_kib(p, "VmHWM") for p in pids]
        finally:
            for call in calls:
                call.cancel()
            for channel in channels:
                await channel.close()
            for agent in agents:
                agent.stop()

    def mb(values: list[int]) -> float:
        return round(statistics.mean(values) / 1024, 1)

    return {
        "agents": count,
        "idle_rss_MB": mb(idle_rss),
        "idle_pss_MB": mb(idle_pss),
        "holding_5MB_module_rss_MB": mb(held_rss),
        "holding_5MB_module_pss_MB": mb(held_pss),
        "peak_rss_MB": mb(peak),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=10, help="agents on the node (default 10)")
    parser.add_argument("--sizes", default="1,5", help="module sizes in MB (default 1,5)")
    parser.add_argument("--repeats", type=int, default=3, help="cold single fetches per size")
    parser.add_argument("--memory-agents", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON too")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    report: dict = {
        "machine": {"cpus": os.cpu_count(), "load_average_start": os.getloadavg()[0]},
        "single": [],
        "node": [],
        "mirror": {},
    }
    with tempfile.TemporaryDirectory(prefix="scale-") as tmp:
        work = Path(tmp)
        with Registry(work / "origin") as origin:
            pushed = {}
            with RawPusher(origin.url) as pusher:
                for size in sizes:
                    data = code_module(size * MB, seed=size)
                    pushed[size] = pusher.push_wasm_artifact(REPO, f"v{size}m", data)
            for size in sizes:
                p = pushed[size]
                single = one_fetch(origin, size, p.hex, f"v{size}m", work, args.repeats)
                report["single"].append(single)
                print(f"single fetch, {size} MB: {json.dumps(single)}", flush=True)
                for shared in (True, False):
                    node = node_rollout(origin, p.hex, f"v{size}m", work, args.agents, shared)
                    node["module_MB"] = size
                    report["node"].append(node)
                    print(f"node rollout, {size} MB: {json.dumps(node)}", flush=True)
            big = max(sizes)
            mirror = mirrored_rollout(
                origin, pushed[big].hex, pushed[big].digest, f"v{big}m", work, args.agents
            )
            report["mirror"] = {"module_MB": big, **mirror}
            print(f"pull-through mirror, {big} MB: {json.dumps(mirror)}", flush=True)
            # the memory agents fetch through the proxy path (ECDS conversion), one cache each
            url = origin.oci_url(REPO, f"v{big}m")
            os.environ["WASM_INSECURE_REGISTRIES"] = origin.host
            memory = asyncio.run(agent_memory(work, args.memory_agents, url, pushed[big].hex))
            report["memory"] = memory
            print(f"agent memory: {json.dumps(memory)}", flush=True)
    report["machine"]["load_average_end"] = os.getloadavg()[0]
    print(
        f"load average {report['machine']['load_average_start']:.1f} -> "
        f"{report['machine']['load_average_end']:.1f} on {os.cpu_count()} CPUs"
    )
    if args.json:
        print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
