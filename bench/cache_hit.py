"""Cache-hit cost with the hand-over proof (issue 12), as ratios against baselines of the same run.

Run: ``python bench/cache_hit.py [--quick]`` from the repository root. No network: the module is
fetched once from a ``file://`` URL into a fresh cache directory.

(a) ``ModuleCache.lookup`` of a cached 5 MB module pinned by sha256, after the first proof (the
    proof is remembered per inode, size, mtime and ctime): p50/p99 over N hits. Target: p99 < 1 ms.
(b) The same lookup with the remembered proof dropped before each hit (every hit re-hashes the
    5 MB file): what the proof cache saves.
(c) Floor: ``os.open`` + ``os.fstat`` + ``os.close`` of the module file, N times.
(d) An unpinned lookup (the URL's authenticated index record gives the checksum).

Wall-clock and CPU-time (``time.thread_time``) percentiles are both printed: on a loaded machine
(load average above the CPU count) the wall p99 measures preemption, so the target is judged on
CPU time there and on wall time otherwise (``judged_on`` in the JSON line).

The last line is JSON: ``{"bench":"cache_hit","ratios":{...},"targets":{...},"met":...}``.
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
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support.wasm import code_module
from wasm_agent.cache import ModuleCache, ModuleRequest
from wasm_agent.cache.integrity import Prover
from wasm_agent.core.settings import CacheSettings, FetchSettings

SIZE = 5 * 1024 * 1024
TARGET_P99_MS = 1.0


CPU_TIMES: dict[int, list[float]] = {}


def timings(action: Callable[[], object], runs: int) -> list[float]:
    """Wall seconds per call of ``action``, ``runs`` times (CPU seconds kept in CPU_TIMES)."""
    out, cpu = [], []
    for _ in range(runs):
        started, started_cpu = time.perf_counter(), time.thread_time()
        action()
        out.append(time.perf_counter() - started)
        cpu.append(time.thread_time() - started_cpu)
    CPU_TIMES[id(out)] = cpu
    return out


def p99(values: list[float]) -> float:
    return sorted(values)[max(0, int(len(values) * 0.99) - 1)]


def show(label: str, values: list[float]) -> None:
    print(
        f"    {label:44s} p50 {statistics.median(values) * 1000:7.3f} ms"
        f"  p99 {p99(values) * 1000:7.3f} ms  (n={len(values)})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer runs (CI smoke)")
    args = parser.parse_args()
    runs, slow_runs = (300, 5) if args.quick else (3000, 30)
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "plugin.wasm"
        data = code_module(SIZE, seed=12)
        source.write_bytes(data)
        import hashlib

        sha = hashlib.sha256(data).hexdigest()
        cache = ModuleCache(CacheSettings(directory=Path(tmp) / "cache"), FetchSettings())
        url = source.as_uri()
        pinned = ModuleRequest(url=url, sha256=sha)
        first = asyncio.run(cache.get(pinned))
        assert not first.hit and first.path.read_bytes() == data
        started = time.perf_counter()
        cache._prover = Prover()  # no remembered proof: the first lookup hashes
        assert cache.lookup(pinned) is not None  # the first proof: hashes 5 MB
        first_proof = time.perf_counter() - started

        def hit(request: ModuleRequest = pinned) -> None:
            assert cache.lookup(request) is not None

        def unproven_hit() -> None:
            cache._prover = Prover()  # a fresh prover remembers nothing
            hit()

        def floor() -> None:
            os.close(os.open(first.path, os.O_RDONLY))

        hits = timings(hit, runs)
        unpinned = timings(lambda: hit(ModuleRequest(url=url)), runs)
        rehash = timings(unproven_hit, slow_runs)
        bare = timings(floor, runs)
        cache.close()
    print(
        f"cache hit of a {SIZE // (1024 * 1024)} MB module (load average {os.getloadavg()[0]:.1f})"
    )
    print(f"    first proof (hash 5 MB)                      {first_proof * 1000:7.3f} ms")
    show("(a) hit, pinned, proof remembered", hits)
    show("(b) hit, proof dropped (re-hash each time)", rehash)
    show("(c) floor: open + close of the module file", bare)
    show("(d) hit, unpinned (index record)", unpinned)
    hits_cpu, unpinned_cpu = CPU_TIMES[id(hits)], CPU_TIMES[id(unpinned)]
    show("(a) CPU time", hits_cpu)
    show("(d) CPU time", unpinned_cpu)
    loaded = os.getloadavg()[0] > (os.cpu_count() or 1)
    ratios = {
        "hit_p99_vs_rehash_p50": round(p99(hits) / statistics.median(rehash), 4),
        "hit_p50_vs_floor_p50": round(statistics.median(hits) / statistics.median(bare), 2),
        "unpinned_p50_vs_pinned_p50": round(
            statistics.median(unpinned) / statistics.median(hits), 2
        ),
    }
    figures = {
        "hit_p50_ms": round(statistics.median(hits) * 1000, 4),
        "hit_p99_ms": round(p99(hits) * 1000, 4),
        "unpinned_p99_ms": round(p99(unpinned) * 1000, 4),
        "hit_cpu_p99_ms": round(p99(hits_cpu) * 1000, 4),
        "unpinned_cpu_p99_ms": round(p99(unpinned_cpu) * 1000, 4),
        "first_proof_ms": round(first_proof * 1000, 3),
        "load_average": round(os.getloadavg()[0], 1),
    }
    judged = (
        ("hit_cpu_p99_ms", "unpinned_cpu_p99_ms") if loaded else ("hit_p99_ms", "unpinned_p99_ms")
    )
    met = all(figures[name] < TARGET_P99_MS for name in judged)
    doc = {
        "bench": "cache_hit",
        "ratios": ratios,
        "figures": figures,
        "targets": {"hit_p99_ms": f"< {TARGET_P99_MS}", "unpinned_p99_ms": f"< {TARGET_P99_MS}"},
        "judged_on": list(judged),
        "met": met,
    }
    print(json.dumps(doc, separators=(",", ":")))


if __name__ == "__main__":
    main()
