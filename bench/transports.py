"""Transports for the xDS proxy's pass-through path, measured side by side in one run.

    python bench/transports.py [--quick] [--reps N] [--only a,b]

Same ADS server (``bench/proxy.py --serve``: asyncio grpcio, its own process), same client
(``bench.proxy.Client``: grpc.aio, this process), each forwarder in its own process on a Unix
socket, all started once and measured interleaved (direct, then each forwarder in turn, ``reps``
times; medians of the per-run figures). Variants:

- ``agent``: ``wasm-agent proxy`` as shipped (with ``wasm_agent.xds.grpc_core``'s
  ``GRPC_EXPERIMENTS``); ``agent_ee``: the same with grpc's defaults (``GRPC_EXPERIMENTS=``).
- ``aio``: the smallest grpc.aio forwarder (``bench.proxy.forward``; no parsing, no ECDS);
  ``aio_noee``: the same with the agent's ``GRPC_EXPERIMENTS`` (no EventEngine client and
  listener: the thread polling the completion queue reads the socket itself).
- ``aio_tuned``: ``aio`` with HTTP/2 and TCP tuning options on both hops (16 MiB frames,
  lookahead and write buffer, read chunk sizes, no BDP probe) and ``optimization_target``.
- ``sync``, ``sync_noee``: grpcio's synchronous API: one thread pumps istiod -> Envoy (the
  server handler iterating the upstream call), grpc's request-consumer thread pumps
  Envoy -> istiod; the C core releases the GIL while waiting.
- ``grpclib`` (only if installed): pure-Python HTTP/2 (h2) on asyncio, no C poller thread.
- ``splice``: not a gRPC proxy: an asyncio byte splice of the connection (no HTTP/2 parsing,
  so no per-message inspection, no TLS termination). What a raw HTTP/2 frame relay written in
  Python could reach at best.
- ``kernel_splice``: ``splice(2)`` through a pipe, zero-copy: the floor of *any* third process
  on the path, whatever its language.

Besides the wall-clock figures (added p50/p99 latency, 1 MB throughput ratio), it prints CPU
time per message of every process on the path (client, server, forwarder) from
``/proc/PID/stat`` during the throughput runs: on a 2-core machine the proxied path has a third
busy process, and the CPU figure shows how much work the forwarder itself adds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent import futures
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import grpc  # noqa: E402
import grpc.aio  # noqa: E402

from bench.proxy import OPTIONS, Client, forward, pct  # noqa: E402
from tests.e2e.agentproc import AgentProcess, free_port  # noqa: E402
from wasm_agent.xds.grpc_core import LOW_LATENCY_EXPERIMENTS  # noqa: E402
from wasm_agent.xds.upstream import ADS_SERVICE, SOTW_METHOD  # noqa: E402

TUNED = [
    *OPTIONS,
    ("grpc.optimization_target", "latency"),
    ("grpc.http2.max_frame_size", 16 * 1024 * 1024 - 1),
    ("grpc.http2.lookahead_bytes", 16 * 1024 * 1024),
    ("grpc.http2.write_buffer_size", 8 * 1024 * 1024),
    ("grpc.http2.bdp_probe", 0),
    ("grpc.experimental.tcp_read_chunk_size", 1024 * 1024),
    ("grpc.experimental.tcp_min_read_chunk_size", 256 * 1024),
    ("grpc.experimental.tcp_max_read_chunk_size", 4 * 1024 * 1024),
    ("grpc.tcp_receive_buffer_size", 4 * 1024 * 1024),
]


# -- forwarders (each runs in its own process) --------------------------------------------
async def forward_tuned(upstream: str, sock: str) -> None:
    """``bench.proxy.forward`` with the tuned options on both hops."""
    import bench.proxy

    bench.proxy.OPTIONS[:] = TUNED  # forward() reads the module-level list
    await forward(upstream, sock)


def forward_sync(upstream: str, sock: str) -> None:
    """grpcio sync API: thread-per-stream pumps, no asyncio."""
    channel = grpc.insecure_channel(upstream, options=OPTIONS)
    method = channel.stream_stream(SOTW_METHOD)

    def handler(requests, context):
        responses = method(requests)  # grpc consumes ``requests`` in its own thread
        context.add_callback(responses.cancel)
        yield from responses

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8), options=OPTIONS)
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                ADS_SERVICE,
                {"StreamAggregatedResources": grpc.stream_stream_rpc_method_handler(handler)},
            ),
        )
    )
    server.add_insecure_port(f"unix:{sock}")
    server.start()
    server.wait_for_termination()


async def forward_splice(upstream: str, sock: str) -> None:
    """Copy the bytes of each connection both ways (no HTTP/2 awareness at all)."""
    host, _, port = upstream.rpartition(":")

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(1 << 20):
                writer.write(data)
                await writer.drain()
        finally:
            writer.close()

    async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(host, int(port))
        await asyncio.gather(
            pipe(reader, up_writer), pipe(up_reader, writer), return_exceptions=True
        )

    server = await asyncio.start_unix_server(connection, sock)
    await server.serve_forever()


async def forward_grpclib(upstream: str, sock: str) -> None:
    """grpclib (pure-Python HTTP/2 on asyncio, ``pip install grpclib``): no C poller thread."""
    from grpclib.client import Channel
    from grpclib.const import Cardinality, Handler
    from grpclib.encoding.base import CodecBase
    from grpclib.server import Server

    class Raw(CodecBase):
        __content_subtype__ = "proto"

        def encode(self, message, message_type):
            return message

        def decode(self, data, message_type):
            return data

    host, _, port = upstream.rpartition(":")
    channel = Channel(host, int(port), codec=Raw())

    async def handler(stream) -> None:
        async with channel.request(SOTW_METHOD, Cardinality.STREAM_STREAM, None, None) as call:
            await call.send_request()

            async def up() -> None:
                async for raw in stream:
                    await call.send_message(raw)

            task = asyncio.create_task(up())
            async for raw in call:
                await stream.send_message(raw)
            task.cancel()

    class Service:
        def __mapping__(self) -> dict:
            return {SOTW_METHOD: Handler(handler, Cardinality.STREAM_STREAM, None, None)}

    server = Server([Service()], codec=Raw())
    await server.start(path=sock)
    await server.wait_closed()


def forward_kernel_splice(upstream: str, sock: str) -> None:
    """``splice(2)`` through a pipe, two blocking threads per connection: zero-copy floor."""
    import socket
    import threading

    host, _, port = upstream.rpartition(":")

    def pipe(src: socket.socket, dst: socket.socket) -> None:
        r, w = os.pipe()
        with contextlib.suppress(OSError):
            while n := os.splice(src.fileno(), w, 1 << 20):
                while n:
                    n -= os.splice(r, dst.fileno(), n)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    listener = socket.socket(socket.AF_UNIX)
    listener.bind(sock)
    listener.listen()
    while True:
        down, _ = listener.accept()
        up = socket.create_connection((host, int(port)))
        up.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        threading.Thread(target=pipe, args=(down, up), daemon=True).start()
        threading.Thread(target=pipe, args=(up, down), daemon=True).start()


FORWARDERS: dict[str, Callable] = {
    "aio": lambda up, sock: asyncio.run(forward(up, sock)),
    "aio_tuned": lambda up, sock: asyncio.run(forward_tuned(up, sock)),
    "sync": forward_sync,
    "grpclib": lambda up, sock: asyncio.run(forward_grpclib(up, sock)),
    "splice": lambda up, sock: asyncio.run(forward_splice(up, sock)),
    "kernel_splice": forward_kernel_splice,
}
# grpc C-core without its EventEngine client and listener (what the agent sets, see
# wasm_agent/xds/grpc_core.py): the thread polling the completion queue reads the socket itself
NO_EVENT_ENGINE = {"GRPC_EXPERIMENTS": LOW_LATENCY_EXPERIMENTS}
FORWARDERS["aio_noee"] = FORWARDERS["aio"]
FORWARDERS["sync_noee"] = FORWARDERS["sync"]
FORWARDER_ENV = {
    "agent_ee": {"GRPC_EXPERIMENTS": ""},  # grpc's defaults: the agent before grpc_core
    "aio_noee": NO_EVENT_ENGINE,
    "sync_noee": NO_EVENT_ENGINE,
}
VARIANTS = ("agent", "agent_ee", *FORWARDERS)


# -- measuring ----------------------------------------------------------------------------
def cpu_seconds(pid: int) -> float:
    """CPU time of a process, all its live threads, in ns precision (``schedstat``)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):  # a thread just ended
            total += int((task / "schedstat").read_text().split()[0])
    return total / 1e9


class Path_:
    """One way to reach the server: a client plus the pids whose CPU time counts."""

    def __init__(self, name: str, target: str, pid: int | None = None) -> None:
        self.name = name
        self.client = Client(target)
        self.pid = pid  # the forwarder's process, if any


async def with_cpu(path: Path_, server_pid: int, work) -> tuple[object, dict[str, float]]:
    """Run ``work`` (a coroutine) and return its result and each process's CPU seconds."""
    pids = {"client": os.getpid(), "server": server_pid}
    if path.pid is not None:
        pids["forwarder"] = path.pid
    before = {k: cpu_seconds(p) for k, p in pids.items()}
    result = await work
    return result, {k: cpu_seconds(p) - before[k] for k, p in pids.items()}


async def measure(paths: list[Path_], server_pid: int, quick: bool, reps: int) -> dict:
    for path in paths:  # warm-up
        await path.client.latency(1024, 50)
        await path.client.throughput(2**20, 10)
    rounds = {1024: 300 if quick else 1000, 2**20: 20 if quick else 60}
    runs: dict[str, dict[str, list[float]]] = {p.name: {} for p in paths}

    def add(name: str, key: str, value: float) -> None:
        runs[name].setdefault(key, []).append(value)

    for rep in range(reps):
        # rotate the order so no variant always runs right after another
        order = paths[rep % len(paths) :] + paths[: rep % len(paths)]
        for size, count in rounds.items():
            label = "1KB" if size == 1024 else "1MB"
            for path in order:
                samples, cpu = await with_cpu(path, server_pid, path.client.latency(size, count))
                add(path.name, f"p50_{label}", pct(samples, 0.5))
                add(path.name, f"p99_{label}", pct(samples, 0.99))
                if size == 1024:
                    for key, seconds in cpu.items():
                        add(path.name, f"cpu1k_{key}", seconds * 1e6 / count)
        count = 30 if quick else 100
        for path in order:
            rate, cpu = await with_cpu(path, server_pid, path.client.throughput(2**20, count))
            add(path.name, "rate", rate)
            for key, seconds in cpu.items():
                add(path.name, f"cpu1m_{key}", seconds * 1e3 / count)
        # paired with this repetition's direct run: load from other work moves both alike
        direct_run = {key: values[-1] for key, values in runs["direct"].items()}
        for path in paths[1:]:
            last = {key: values[-1] for key, values in runs[path.name].items()}
            for key in ("p50_1KB", "p99_1KB", "p50_1MB"):
                add(path.name, f"added_{key}", last[key] - direct_run[key])
            add(path.name, "ratio", last["rate"] / direct_run["rate"])
    medians = {name: {k: statistics.median(v) for k, v in r.items()} for name, r in runs.items()}
    table = {}
    for name, m in medians.items():
        row = {
            "p50_1KB_ms": round(m["p50_1KB"], 3),
            "p99_1KB_ms": round(m["p99_1KB"], 3),
            "p50_1MB_ms": round(m["p50_1MB"], 3),
            "MBps": round(m["rate"] / 1e6),
            "cpu_us_per_1KB_round_trip": {
                k[6:]: round(v) for k, v in m.items() if k.startswith("cpu1k_")
            },
            "cpu_ms_per_1MB_msg": {
                k[6:]: round(v, 3) for k, v in m.items() if k.startswith("cpu1m_")
            },
        }
        if name != "direct":
            # medians of the per-repetition differences and ratios against direct
            row["added_p50_1KB_ms"] = round(m["added_p50_1KB"], 3)
            row["added_p99_1KB_ms"] = round(m["added_p99_1KB"], 3)
            row["added_p50_1MB_ms"] = round(m["added_p50_1MB"], 3)
            row["throughput_ratio"] = round(m["ratio"], 2)
        table[name] = row
    return table


async def main(quick: bool, reps: int, only: list[str]) -> dict:
    workdir = Path(tempfile.mkdtemp(prefix="wa-transports-", dir="/tmp"))
    port = free_port()
    upstream = f"127.0.0.1:{port}"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    server = subprocess.Popen([sys.executable, str(ROOT / "bench/proxy.py"), "--serve", str(port)])
    children: list[subprocess.Popen] = [server]
    agents: list[AgentProcess] = []
    paths: list[Path_] = []
    load_before = os.getloadavg()
    try:
        time.sleep(1.0)
        paths.append(Path_("direct", upstream))
        for name in only:
            if name.startswith("agent"):
                agent = AgentProcess(
                    workdir / name, upstream, "--plaintext", env=FORWARDER_ENV.get(name)
                )
                agents.append(agent)
                agent.args[agent.args.index("--log-level") + 1] = "warning"
                agent.start()
                assert agent.process is not None
                paths.append(Path_(name, f"unix:{agent.socket}", agent.process.pid))
                continue
            sock = workdir / f"{name}.sock"
            process = subprocess.Popen(
                [sys.executable, __file__, "--forward", name, upstream, str(sock)],
                env={**env, **FORWARDER_ENV.get(name, {})},
            )
            children.append(process)
            deadline = time.monotonic() + 15
            while not sock.exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            paths.append(Path_(name, f"unix:{sock}", process.pid))
        table = await measure(paths, server.pid, quick, reps)
    finally:
        for path in paths:
            await path.client.close()
        for agent in agents:
            agent.stop()
        for process in reversed(children):
            process.terminate()
            process.wait(10)
    return {
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "reps": reps,
        "results": table,
    }


TARGETS = {"agent_added_p50_1KB_vs_aio": "<= 1.1", "agent_throughput_1MB_vs_aio": ">= 1.0"}


def summary(report: dict) -> dict:
    """The one-line result: the shipped agent against the bare grpc.aio forwarder with the same
    ``GRPC_EXPERIMENTS`` (``aio_noee``; ``aio`` if that was not run), same run, same reps."""
    rows = report["results"]
    floor = "aio_noee" if "aio_noee" in rows else "aio"
    ratios: dict[str, float] = {}
    if "agent" in rows and floor in rows:
        agent, bare = rows["agent"], rows[floor]
        if bare["added_p50_1KB_ms"] > 0:
            ratios["agent_added_p50_1KB_vs_aio"] = round(
                agent["added_p50_1KB_ms"] / bare["added_p50_1KB_ms"], 3
            )
        ratios["agent_throughput_1MB_vs_aio"] = round(
            agent["throughput_ratio"] / bare["throughput_ratio"], 3
        )
    for name, row in rows.items():
        if name != "direct":
            ratios[f"{name}.throughput_vs_direct"] = row["throughput_ratio"]
    checked = {k: t for k, t in TARGETS.items() if k in ratios}
    ok = len(checked) == len(TARGETS) and all(
        ratios[k] <= float(t.split()[1]) if t.startswith("<=") else ratios[k] >= float(t.split()[1])
        for k, t in checked.items()
    )
    return {
        "bench": "transports",
        "floor": floor,
        "ratios": ratios,
        "load_average": report["load_average_after"][0],
        "targets": TARGETS,
        "met": ok,
    }


def markdown(report: dict) -> str:
    """The report as a Markdown table (one row per variant)."""
    lines = [
        "| variant | added p50 / p99 1 KB (ms) | added p50 1 MB (ms) | 1 MB throughput vs direct "
        "| forwarder CPU per 1 KB round trip (us) | forwarder CPU per 1 MB message (ms) |",
        "|---|---|---|---|---|---|",
    ]
    for name, row in report["results"].items():
        if name == "direct":
            cpu1k, cpu1m = row["cpu_us_per_1KB_round_trip"], row["cpu_ms_per_1MB_msg"]
            lines.append(
                f"| direct ({row['p50_1KB_ms']} ms p50 1 KB, {row['MBps']} MB/s) | | | "
                f"| client {cpu1k['client']}, server {cpu1k['server']} "
                f"| client {cpu1m['client']}, server {cpu1m['server']} |"
            )
            continue
        lines.append(
            f"| {name} | {row['added_p50_1KB_ms']} / {row['added_p99_1KB_ms']} "
            f"| {row['added_p50_1MB_ms']} | {row['throughput_ratio']}x "
            f"| {row['cpu_us_per_1KB_round_trip'].get('forwarder', '')} "
            f"| {row['cpu_ms_per_1MB_msg'].get('forwarder', '')} |"
        )
    load = report["load_average_before"][0], report["load_average_after"][0]
    lines.append(f"\nload average (1 min) {load[0]} before, {load[1]} after; {report['reps']} reps")
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds (a smoke run)")
    parser.add_argument("--reps", type=int, default=5, help="interleaved repetitions")
    default = [v for v in VARIANTS if v != "grpclib" or importlib.util.find_spec("grpclib")]
    parser.add_argument("--only", default=",".join(default), help="comma-separated variants")
    parser.add_argument("--markdown", action="store_true", help="a table instead of JSON")
    parser.add_argument("--forward", nargs=3, help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.forward:
        name, upstream, sock = options.forward
        FORWARDERS[name](upstream, sock)
    else:
        chosen = [v for v in options.only.split(",") if v]
        unknown = set(chosen) - set(VARIANTS)
        if unknown:
            parser.error(f"unknown variants: {', '.join(sorted(unknown))}")
        report = asyncio.run(main(options.quick, options.reps, chosen))
        print(markdown(report) if options.markdown else json.dumps(report, indent=2))
        print(json.dumps(summary(report)))
