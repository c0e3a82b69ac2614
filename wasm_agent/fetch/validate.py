"""Module validation: a full wasmtime compile in a worker subprocess.

The compile runs in a child process (``compile_worker.py``) with a wall-clock limit, an
address-space limit and a CPU-time limit, so a hostile or huge module can neither stall the
event loop nor grow the agent's memory. wasmtime's compiled-artifact cache under
``<cache dir>/compiled`` makes a module compile once across runs and processes.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

from wasm_agent.fetch.errors import InvalidModule

WORKER = Path(__file__).with_name("compile_worker.py")
CACHE_CONFIG_NAME = "wasmtime-cache.toml"


@dataclass(frozen=True)
class ValidateSettings:
    """Limits of one compile; ``compiled_cache_dir`` None disables the artifact cache."""

    compiled_cache_dir: Path | None = None
    time_limit: float = 120.0
    memory_limit: int = 4 * 1024**3  # address space; wasmtime reserves far more than it uses


def cache_config(directory: Path) -> Path:
    """Write (once) the wasmtime cache TOML pointing at ``directory``; return its path."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = directory / CACHE_CONFIG_NAME
    text = f"[cache]\ndirectory = {json.dumps(str(directory / 'artifacts'))}\n"
    try:
        if path.read_text() == text:
            return path
    except OSError:
        pass
    tmp = directory / f".{CACHE_CONFIG_NAME}.{os.getpid()}"
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


async def validate_module(path: Path, settings: ValidateSettings | None = None) -> None:
    """Compile ``path`` with wasmtime in a limited subprocess; raise :class:`InvalidModule`."""
    import asyncio

    settings = settings or ValidateSettings()
    toml = ""
    if settings.compiled_cache_dir is not None:
        try:
            toml = str(cache_config(settings.compiled_cache_dir))
        except OSError:
            toml = ""  # compile without the artifact cache rather than fail
    cpu = int(settings.time_limit * (os.cpu_count() or 1)) + 1
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-I",
        str(WORKER),
        str(path),
        toml,
        str(settings.memory_limit),
        str(cpu),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(settings.time_limit):
            _, err = await process.communicate()
    except BaseException as error:  # timeout or cancellation: never leave the worker behind
        if process.returncode is None:
            process.kill()
            await asyncio.shield(process.wait())
        if isinstance(error, TimeoutError):
            raise InvalidModule(
                str(path), f"compiling took longer than {settings.time_limit:g}s"
            ) from None
        raise
    if process.returncode == 0:
        return
    reason = _reason(process.returncode, err.decode(errors="replace"), settings.memory_limit)
    raise InvalidModule(str(path), reason)


def _reason(returncode: int | None, stderr: str, memory_limit: int) -> str:
    lines = [line for line in stderr.strip().splitlines() if line.startswith("error: ")]
    if lines:
        return lines[-1].removeprefix("error: ")
    if "memory allocation of" in stderr:  # Rust's out-of-memory abort inside wasmtime
        return f"compiling the module exceeded the memory limit ({memory_limit >> 20} MiB)"
    if returncode is not None and returncode < 0:
        name = signal.Signals(-returncode).name
        return f"compile worker killed by {name} (memory or CPU limit exceeded?)"
    tail = stderr.strip().splitlines()[-1:] or [f"exit status {returncode}"]
    return f"compile worker failed: {tail[0]}"
