"""Compile one Wasm module in a resource-limited child process (run as a script).

``python -I compile_worker.py MODULE CACHE_TOML MEMORY_BYTES CPU_SECONDS [OPT_LEVEL]``: imports only
wasmtime, so the worker starts in tens of milliseconds. Exit 0: compiled. Exit 1: the last
stderr line is ``error: <reason>``. Limits are set before wasmtime is loaded.

The compile only proves that the module compiles; Envoy never runs this machine code. So it
uses Cranelift with ``opt_level = "none"`` (:data:`OPT_LEVEL`; ``speed`` is wasmtime's
default, kept for comparison in the tests and the benchmark): the same compiler, features
and limits as wasmtime's default, without the optimisation passes (about 0.4x the default's
time on a 5 MB code module, ``bench/prefetch.py``). Not Winch, wasmtime's baseline compiler:
it refuses valid modules Cranelift accepts (tail calls, threads, exceptions, GC, relaxed SIMD).
The reference host (``check``, ``run``) keeps its own engines (:mod:`wasm_agent.host.compile`).
"""

import resource
import sys

OPT_LEVEL = "none"  # Cranelift's optimisation level for the sanity compile


def _fail(reason: str) -> None:
    sys.stderr.write(f"error: {reason}\n")
    sys.exit(1)


def _summary(message: str) -> str:
    """The wasmtime message's first line, plus its innermost cause when there is one."""
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    if not lines:
        return "unknown wasmtime error"
    first, last = lines[0], lines[-1]
    if last != first and not last.startswith("Caused by"):
        last = last.split(": ", 1)[1] if last[:1].isdigit() and ": " in last else last
        return f"{first}: {last}"
    return first


def main(argv: list[str]) -> None:
    module_path, cache_toml, memory, cpu = argv[1], argv[2], int(argv[3]), int(argv[4])
    opt_level = argv[5] if len(argv) > 5 else OPT_LEVEL
    if memory > 0:
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    if cpu > 0:
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    try:
        import wasmtime  # noqa: PLC0415 - loaded only after the resource limits are set

        with open(module_path, "rb") as handle:
            data = handle.read()
        config = wasmtime.Config()
        config.cranelift_opt_level = opt_level
        if cache_toml:
            try:
                config.cache = cache_toml
            except wasmtime.WasmtimeError as error:
                sys.stderr.write(f"warning: compiled-module cache disabled: {error}\n")
        engine = wasmtime.Engine(config)
        try:
            wasmtime.Module.validate(engine, data)  # cheap, and its message is the clearest
        except wasmtime.WasmtimeError as error:
            _fail(f"invalid Wasm module: {_summary(str(error))}")
        try:
            wasmtime.Module(engine, data)
        except wasmtime.WasmtimeError as error:
            _fail(f"wasmtime cannot compile the module: {_summary(str(error))}")
    except MemoryError:
        _fail("compiling the module exceeded the memory limit")
    except Exception as error:  # e.g. wasmtime's library cannot even be mapped under the limit
        _fail(f"compile worker failed ({type(error).__name__}: {error}); memory limit too low?")


if __name__ == "__main__":
    main(sys.argv)
