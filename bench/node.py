"""The node service (``wasm-agent node``): publish latency, placement vs per-pod download, RSS.

Run: ``python bench/node.py [--quick] [--views N] [--size MB]`` from the repository root, as
root (the node service makes real bind mounts; everything in a temp dir, HTTP on 127.0.0.1).

What it measures, with a real node service process and CSI calls made as kubelet makes them
(``tests/node/harness.py``: gRPC over the real Unix socket):

1. publish latency per view: ``NodePublishVolume`` for N new pods one after another (view
   directory, read-only bind mount, per-pod ``node.sock``, record fsynced), p50/p95;
2. module placement per pod vs a per-pod download: after one cold fetch by the node, the
   time each further pod waits for its module over ``node.sock`` (node cache hit, read-only
   bind mount into its view, hold, record) against what each pod's agent does without the node
   service: fetch over HTTP, check the sha256, compile in the worker, store, in its own cache
   (``ModuleCache.get`` in a fresh directory). Both with the same ``code_module`` (real
   functions, so compiling costs what a plugin costs). Downloads counted at the HTTP server;
3. node service RSS (``/proc/<pid>/status`` VmRSS) idle, with N views, and with N views each
   holding the module.

The last line is JSON: ``{"bench":"node","ratios":{...},"targets":{...},"met":...}``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.node.harness import Kubelet, NodeProcess  # noqa: E402
from tests.support.modserver import ModServer  # noqa: E402
from tests.support.wasm import code_module, sha256_hex  # noqa: E402
from wasm_agent.cache.model import ModuleRequest  # noqa: E402
from wasm_agent.cache.module_cache import ModuleCache  # noqa: E402
from wasm_agent.core.settings import CacheSettings, FetchSettings  # noqa: E402
from wasm_agent.node.client import NodeModuleSource  # noqa: E402

MB = 1024 * 1024
TARGETS = {
    "publish_p95_ms": 100.0,  # kubelet waits for NodePublishVolume before starting containers
    "placement_speedup": 10.0,  # per-pod download time / per-pod placement time, at least
    "rss_100_views_mb": 150.0,  # the node service with 100 views each holding a module
}


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def ms(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 3)


async def per_pod_downloads(url: str, sha: str, pods: int, work: Path) -> list[float]:
    """What each pod's own agent does without the node service: a full fetch into its cache."""
    times = []
    for i in range(pods):
        cache = ModuleCache(CacheSettings(work / f"pod-cache-{i}"), FetchSettings())
        start = time.perf_counter()
        await cache.get(ModuleRequest(url=url, sha256=sha, timeout=120))
        times.append(time.perf_counter() - start)
        cache.close()
    return times


async def run(views: int, compare: int, size: int, work: Path) -> dict:
    module = code_module(size, seed=11)
    sha = sha256_hex(module)
    with ModServer() as server:
        url = server.serve("/plugin.wasm", module)
        node = NodeProcess(work / "node").start()
        try:
            assert node.process is not None
            pid = node.process.pid
            rss_idle = rss_mb(pid)
            with Kubelet(node) as kubelet:
                pods = [kubelet.pod(f"p{i}") for i in range(views)]
                publish = []
                for pod in pods:
                    start = time.perf_counter()
                    kubelet.publish(pod)
                    publish.append(time.perf_counter() - start)
                rss_views = rss_mb(pid)
                request = ModuleRequest(url=url, sha256=sha, timeout=120)
                start = time.perf_counter()
                await NodeModuleSource(pods[0].socket).get(request)
                cold = time.perf_counter() - start
                placement = []
                for pod in pods[1:]:
                    start = time.perf_counter()
                    got = await NodeModuleSource(pod.socket).get(request)
                    placement.append(time.perf_counter() - start)
                    assert got.hit
                rss_held = rss_mb(pid)
                node_downloads = server.count("/plugin.wasm")
                for pod in pods:
                    kubelet.unpublish(pod)
        finally:
            node.cleanup()
        server.reset_counts()
        downloads = await per_pod_downloads(url, sha, compare, work)
        per_pod_downloads_count = server.count("/plugin.wasm")
    return {
        "views": views,
        "module_mb": round(size / MB, 2),
        "publish_p50_ms": ms(publish, 0.5),
        "publish_p95_ms": ms(publish, 0.95),
        "node_cold_fetch_ms": round(cold * 1000, 1),
        "placement_p50_ms": ms(placement, 0.5),
        "placement_p95_ms": ms(placement, 0.95),
        "per_pod_download_p50_ms": ms(downloads, 0.5),
        "downloads_node": node_downloads,
        "downloads_per_pod_caches": per_pod_downloads_count,
        "per_pod_pods": compare,
        "rss_idle_mb": round(rss_idle, 1),
        "rss_views_mb": round(rss_views, 1),
        "rss_views_holding_mb": round(rss_held, 1),
        "_placement_median": statistics.median(placement),
        "_download_median": statistics.median(downloads),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20 views, 3 per-pod downloads")
    parser.add_argument("--views", type=int, default=100)
    parser.add_argument("--size", type=float, default=1.0, help="module size in MB")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/node.py: run as root (the node service makes bind mounts)")
    views = 20 if args.quick else args.views
    compare = 3 if args.quick else 10
    with tempfile.TemporaryDirectory(prefix="bench-node-") as work:
        figures = asyncio.run(run(views, compare, int(args.size * MB), Path(work)))
    speedup = figures.pop("_download_median") / figures.pop("_placement_median")
    for name, value in figures.items():
        print(f"{name}: {value}", flush=True)
    ratios = {
        "placement_speedup": round(speedup, 1),
        "downloads_per_pod_vs_node": figures["downloads_per_pod_caches"]
        / max(1, figures["downloads_node"]),
    }
    met = (
        figures["publish_p95_ms"] <= TARGETS["publish_p95_ms"]
        and ratios["placement_speedup"] >= TARGETS["placement_speedup"]
        and (views < 100 or figures["rss_views_holding_mb"] <= TARGETS["rss_100_views_mb"])
        and figures["downloads_node"] == 1
    )
    doc = {
        "bench": "node",
        "ratios": ratios,
        "figures": figures,
        "targets": {
            "publish_p95_ms": f"<= {TARGETS['publish_p95_ms']}",
            "placement_speedup": f">= {TARGETS['placement_speedup']}",
            "rss_100_views_mb": f"<= {TARGETS['rss_100_views_mb']}",
            "downloads_node": "== 1",
        },
        "met": met,
    }
    print(json.dumps(doc, separators=(",", ":")))


if __name__ == "__main__":
    main()
