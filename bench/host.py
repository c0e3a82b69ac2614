"""Reference-host costs, as ratios against baselines measured in the same run.

Run: ``python bench/host.py`` (from the repository root). Prints:

1. One HTTP exchange (request headers -> plugin -> response headers -> plugin, then on_log,
   on_done, on_delete: 6 callbacks and 2 host calls) through a minimal header plugin, with
   Envoy's front-end model on (the default) and off, against the floor of 6 bare
   ``wasmtime.Func`` export calls on the same instance. Target: <= 2x the floor.
2. Compiled-module cache: a ~160 KB plugin-sized module compiled cold vs a disk-cache hit
   (``Module.deserialize``) vs an in-process hit.
3. The pytest plugin's cost per test: a separate pytest run of N tests that each take the
   ``wasm_plugin`` fixture (load + start as Envoy --concurrency 2, one exchange, shutdown)
   against N tests doing the same exchange on one plugin started once, and N empty tests.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from importlib.metadata import entry_points
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.host.wat import plugin
from tests.support.wasm import code_module
from wasm_agent.host import compile
from wasm_agent.host.harness import start_plugin

HEADER_PLUGIN = """
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (drop (call $proxy_add_header_map_value (i32.const 0) (i32.const 1024) (i32.const 5)
                (i32.const 1030) (i32.const 2)))
    (i32.const 0))
  (func (export "proxy_on_response_headers") (param i32 i32 i32) (result i32)
    (drop (call $proxy_add_header_map_value (i32.const 2) (i32.const 1024) (i32.const 5)
                (i32.const 1030) (i32.const 2)))
    (i32.const 0))
  (func (export "proxy_on_log") (param i32))
  (func (export "proxy_on_done") (param i32) (result i32) (i32.const 1))
  (func (export "proxy_on_delete") (param i32))
"""
REQUEST = {":method": "GET", ":path": "/", ":authority": "example.com", "user-agent": "bench"}
RESPONSE = {":status": "200", "content-type": "text/plain"}


def per_call_us(fn: Callable[[], object], rounds: int, repeat: int = 7) -> float:
    """Median over ``repeat`` runs of the mean time per call, in microseconds."""
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(rounds):
            fn()
        samples.append((time.perf_counter() - start) / rounds * 1e6)
    return statistics.median(samples)


def bench_exchange() -> None:
    wasm = plugin(HEADER_PLUGIN, data={1024: "x-hdr", 1030: "on"})
    host = start_plugin(wasm, fuel=None)
    ex = host.exchange(REQUEST, b"", RESPONSE, b"")
    assert ex.upstream.headers.to_dict()["x-hdr"] == "on", ex
    assert ex.client.headers.to_dict()["x-hdr"] == "on", ex
    exchange = per_call_us(lambda: host.exchange(REQUEST, b"", RESPONSE, b""), 2000)

    vm = host.vm
    store = vm.store
    names = ("proxy_on_context_create", "proxy_on_log", "proxy_on_done", "proxy_on_delete")
    create, log, done, delete = (vm.callbacks[n]._func for n in names)
    # The two headers exports would call the host; a floor of bare calls uses exports that do
    # not: same count (6) and similar arity.

    def bare() -> None:
        create(store, 99, 1)
        log(store, 99)
        done(store, 99)
        delete(store, 99)
        log(store, 99)
        done(store, 99)

    floor = per_call_us(bare, 2000)
    raw = [vm.callbacks[n] for n in names]

    def bare_raw() -> None:
        raw[0](99, 1)
        raw[1](99)
        raw[2](99)
        raw[3](99)
        raw[1](99)
        raw[2](99)

    raw_floor = per_call_us(bare_raw, 2000)
    fueled = start_plugin(wasm)
    with_fuel = per_call_us(lambda: fueled.exchange(REQUEST, b"", RESPONSE, b""), 2000)
    bare_front = per_call_us(
        lambda: host.exchange(REQUEST, b"", RESPONSE, b"", frontend=False), 2000
    )
    rows = [
        ("floor: 6 bare wasmtime-py export calls", floor, ""),
        ("floor: 6 raw unchecked export calls", raw_floor, "  (the host's own call path)"),
        ("exchange (front end on, no fuel)", exchange, f"  ratio {exchange / floor:.2f}x"),
        ("exchange (front end on, default fuel)", with_fuel, f"  ratio {with_fuel / floor:.2f}x"),
        ("exchange (front end off, no fuel)", bare_front, f"  ratio {bare_front / floor:.2f}x"),
    ]
    print("1. one HTTP exchange through a header plugin (6 callbacks, 2 host calls)")
    for label, value, note in rows:
        print(f"   {label:<40} {value:8.1f} us{note}")
    print("   target: <= 2x the bare wasmtime-py floor")


def bench_cache() -> None:
    data = code_module(160_000, seed=7)
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        compile.forget_in_memory()
        start = time.perf_counter()
        compile.compile_module(data, True, directory)
        cold = (time.perf_counter() - start) * 1e3
        disk_samples = []
        for _ in range(5):
            compile.forget_in_memory()
            start = time.perf_counter()
            compile.compile_module(data, True, directory)
            disk_samples.append((time.perf_counter() - start) * 1e3)
        disk = statistics.median(disk_samples)
        memory = per_call_us(lambda: compile.compile_module(data, True, directory), 2000) / 1e3
    print(f"2. compiled-module cache ({len(data) // 1000} KB module)")
    print(f"   cold compile                             {cold:8.2f} ms")
    print(f"   disk cache hit (deserialize)             {disk:8.2f} ms  {cold / disk:.0f}x faster")
    print(
        f"   in-process hit                           {memory:8.4f} ms  {cold / memory:.0f}x faster"
    )


PLUGIN_TESTS = """
import pytest

REQ = {{":method": "GET", ":path": "/", ":authority": "h"}}
ONCE = []


def _once():
    if not ONCE:
        from wasm_agent.host.harness import start_plugin
        ONCE.append(start_plugin({module!r}))
    return ONCE[0]


@pytest.mark.parametrize("i", range({n}))
def test_fixture(wasm_plugin, i):
    assert wasm_plugin.exchange(REQ).client is not None


@pytest.mark.parametrize("i", range({n}))
def test_shared(i):
    assert _once().exchange(REQ).client is not None


@pytest.mark.parametrize("i", range({n}))
def test_empty(i):
    pass
"""


def _plugin_args() -> list[str]:
    loaded = any(
        ep.value == "wasm_agent.host.pytest_plugin" for ep in entry_points(group="pytest11")
    )
    return [] if loaded else ["-p", "wasm_agent.host.pytest_plugin"]


def _pytest_seconds(project: Path, selection: str) -> float:
    """Wall time of the tests in ``selection`` as pytest reports them (--durations)."""
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         *_plugin_args(), "--durations=0", "--durations-min=0", "-k",
         selection, "--wasm-plugin", "plugin.wasm"],
        cwd=project, capture_output=True, text=True, check=True,
    )  # fmt: skip
    total = 0.0
    for line in result.stdout.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[0].endswith("s") and parts[1] in ("call", "setup", "teardown"):
            total += float(parts[0][:-1])
    return total


def bench_pytest_plugin(n: int = 200) -> None:
    wasm = plugin(HEADER_PLUGIN, data={1024: "x-hdr", 1030: "on"})
    with tempfile.TemporaryDirectory() as tmp:
        project = Path(tmp)
        (project / "plugin.wasm").write_bytes(wasm)
        module = str(project / "plugin.wasm")
        (project / "test_bench.py").write_text(PLUGIN_TESTS.format(module=module, n=n))
        fixture = _pytest_seconds(project, "test_fixture") / n * 1e3
        shared = _pytest_seconds(project, "test_shared") / n * 1e3
        empty = _pytest_seconds(project, "test_empty") / n * 1e3
    print(f"3. pytest plugin, per test ({n} tests each, setup + call + teardown)")
    print(f"   empty test                               {empty:8.3f} ms")
    print(f"   one exchange on a shared plugin          {shared:8.3f} ms")
    print(f"   wasm_plugin fixture + one exchange       {fixture:8.3f} ms"
          f"  overhead {fixture - shared:.3f} ms per test (a fresh plugin, 4 VMs)")  # fmt: skip


if __name__ == "__main__":
    bench_exchange()
    bench_cache()
    bench_pytest_plugin()
