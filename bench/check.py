"""``wasm-agent check`` cost, as ratios against baselines measured in the same run.

Run: ``python bench/check.py`` (from the repository root).

The whole command (interpreter start included) checks a ~2 MB Proxy-Wasm plugin (a header
plugin plus dead code, so compiling it costs what a real 2 MB plugin costs) with a 20-case spec:

- **cold**: empty reference-host compile cache (``$WASM_AGENT_HOST_CACHE`` in a fresh temp
  dir), so the module is compiled. Baseline: ``python -c pass`` plus a bare in-process
  ``wasmtime.Module(Engine(), bytes)`` of the same bytes. Target < 2 s.
- **warm**: the compile cache filled by an earlier run. Baseline: ``python -c pass``.
  Target < 300 ms.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import wasmtime

REPO = Path(__file__).resolve().parent.parent
RUNS = 5
CASES = 20
TARGET_SIZE = 2 * 1024 * 1024

PLUGIN = """(module
  (import "env" "proxy_add_header_map_value"
    (func $add (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_log" (func $log (param i32 i32 i32) (result i32)))
  (memory (export "memory") 2)
  (data (i32.const 16) "x-bench")
  (data (i32.const 64) "on")
  (data (i32.const 128) "bench: request")
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
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (drop (call $add (i32.const 0) (i32.const 16) (i32.const 7) (i32.const 64) (i32.const 2)))
    (drop (call $log (i32.const 2) (i32.const 128) (i32.const 14)))
    (i32.const 0))
  (func (export "proxy_on_response_headers") (param i32 i32 i32) (result i32)
    (drop (call $add (i32.const 2) (i32.const 16) (i32.const 7) (i32.const 64) (i32.const 2)))
    (i32.const 0))
  FILLER
)"""


def plugin_2mb() -> bytes:
    """The header plugin padded with distinct dead functions to about 2 MB of code."""

    def funcs(count: int) -> str:
        return " ".join(
            "(func (param i32) (result i32) "
            + " ".join(
                f"(local.set 0 (i32.add (i32.mul (local.get 0) (i32.const {n * 7919 + k}))"
                f" (i32.const {k})))"
                for k in range(40)
            )
            + " (local.get 0))"
            for n in range(count)
        )

    count = 1000
    data = wasmtime.wat2wasm(PLUGIN.replace("FILLER", funcs(count)))
    for _ in range(2):  # later functions carry longer constants: converge on the size
        count = int(count * TARGET_SIZE / len(data))
        data = wasmtime.wat2wasm(PLUGIN.replace("FILLER", funcs(count)))
    return data


def spec_text() -> str:
    cases = []
    for i in range(CASES):
        cases.append(
            f"- name: case {i}\n"
            f"  request: {{path: /item/{i}, headers: {{x-case: '{i}'}}}}\n"
            f"  expect:\n"
            f"    upstream: {{headers: {{x-bench: 'on', x-case: '{i}'}}}}\n"
            f"    response: {{status: 200, headers: {{x-bench: 'on'}}}}\n"
            f"    logs: ['bench: request']\n"
        )
    return "".join(cases)


BASE_ENV: dict[str, str] = {}


def timed(argv: list[str], env: dict[str, str] | None = None, ok: tuple[int, ...] = (0,)) -> float:
    started = time.perf_counter()
    result = subprocess.run(
        argv, cwd=REPO, env={**BASE_ENV, **(env or {})}, capture_output=True, text=True
    )
    elapsed = time.perf_counter() - started
    if result.returncode not in ok:
        raise SystemExit(f"{argv} failed ({result.returncode}):\n{result.stdout}{result.stderr}")
    return elapsed * 1000


def main() -> None:
    import os

    data = plugin_2mb()
    with tempfile.TemporaryDirectory() as tmp:
        # Byte-compiled modules, as an installed package has them (this sandbox sets
        # PYTHONDONTWRITEBYTECODE, which would recompile every module on every start).
        BASE_ENV.update(os.environ)
        BASE_ENV.pop("PYTHONDONTWRITEBYTECODE", None)
        BASE_ENV["PYTHONPYCACHEPREFIX"] = str(Path(tmp) / "pycache")
        module = Path(tmp) / "plugin.wasm"
        module.write_bytes(data)
        spec = Path(tmp) / "spec.yaml"
        spec.write_text(spec_text())
        command = [sys.executable, "-m", "wasm_agent", "check", str(module), "--spec", str(spec)]
        bare = (
            "import wasmtime, pathlib; "
            f"wasmtime.Module(wasmtime.Engine(), pathlib.Path({str(module)!r}).read_bytes())"
        )
        timed(command, {"WASM_AGENT_HOST_CACHE": str(Path(tmp) / "warmup")})  # page cache
        pass_ms, bare_ms, cold_ms, warm_ms = [], [], [], []
        warm_cache = str(Path(tmp) / "warm")
        timed(command, {"WASM_AGENT_HOST_CACHE": warm_cache})
        for run in range(RUNS):  # interleaved, so load changes hit every series alike
            pass_ms.append(timed([sys.executable, "-c", "pass"]))
            bare_ms.append(timed([sys.executable, "-c", bare]))
            cold_ms.append(timed(command, {"WASM_AGENT_HOST_CACHE": str(Path(tmp) / f"c{run}")}))
            warm_ms.append(timed(command, {"WASM_AGENT_HOST_CACHE": warm_cache}))
    med = statistics.median
    print(f"check of a {len(data) / 1e6:.2f} MB plugin with {CASES} spec cases "
          f"(median of {RUNS}, whole command)")  # fmt: skip
    print(f"  python -c pass                         {med(pass_ms):8.1f} ms")
    print(f"  python + bare wasmtime compile         {med(bare_ms):8.1f} ms")
    cold, warm = med(cold_ms), med(warm_ms)
    print(f"  cold check (compiles)                  {cold:8.1f} ms  "
          f"{cold / med(bare_ms):.2f}x the bare compile run  (target < 2000 ms)")  # fmt: skip
    print(f"  warm check (compile cache)             {warm:8.1f} ms  "
          f"{warm / med(pass_ms):.2f}x python -c pass  (target < 300 ms)")  # fmt: skip


if __name__ == "__main__":
    main()
