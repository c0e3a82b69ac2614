"""Engines per limit mode and a compiled-module cache (in process and on disk).

A suite compiles each module once: modules are keyed by sha256 of the bytes + wasmtime version +
engine configuration, kept in memory, and serialized with ``Module.serialize`` under
``$WASM_AGENT_HOST_CACHE`` (default ``~/.cache/wasm-agent/host``). Only files this host wrote
are deserialized (the directory is ours); a file that fails to deserialize is recompiled.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import os
import stat
import tempfile
import threading
import time
from pathlib import Path

import wasmtime

from wasm_agent.core import config

_ENGINES: dict[tuple[bool, bool], wasmtime.Engine] = {}
EPOCH_TICK_S = 0.005  # how often the epoch ticker advances epoch-mode engines
_MODULES: dict[str, wasmtime.Module] = {}
STATS = {"memory_hits": 0, "disk_hits": 0, "compiles": 0}


def engine(fuel: bool, epoch: bool = False) -> wasmtime.Engine:
    """The shared engine for a limit mode (fuel metering and epoch checks change the code).

    Epoch engines get a daemon thread advancing their epoch every ``EPOCH_TICK_S`` (wasm runs
    without the GIL, so the ticker keeps going while a callback loops).
    """
    eng = _ENGINES.get((fuel, epoch))
    if eng is None:
        settings = wasmtime.Config()
        settings.consume_fuel = fuel
        settings.epoch_interruption = epoch
        eng = _ENGINES[(fuel, epoch)] = wasmtime.Engine(settings)
        if epoch:
            threading.Thread(target=_tick, args=(eng,), name="wasm-epoch", daemon=True).start()
    return eng


def _tick(eng: wasmtime.Engine) -> None:
    while True:
        time.sleep(EPOCH_TICK_S)
        eng.increment_epoch()


@functools.cache
def wasmtime_version() -> str:
    try:
        return importlib.metadata.version("wasmtime")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover
        return "unknown"


def cache_dir() -> Path:
    """The compiled-module cache: ``$WASM_AGENT_HOST_CACHE`` (read through the configuration
    table), else ``~/.cache/wasm-agent/host``."""
    configured = config.values(config.HOST, os.environ)["host_cache"]
    if configured:
        return Path(configured)
    return Path.home() / ".cache" / "wasm-agent" / "host"


_DIGESTS: dict[bytes, str] = {}  # the last few modules' sha256, keyed by the bytes themselves


def _sha256(data: bytes) -> str:
    """sha256 hex of ``data``, remembered for the same ``bytes``: starting one module many times
    (one plugin per ``check`` spec case) hashes it once; the lookup costs the object's cached
    hash and an identity comparison, not a pass over megabytes."""
    if type(data) is not bytes:
        return hashlib.sha256(data).hexdigest()
    digest = _DIGESTS.get(data)
    if digest is None:
        if len(_DIGESTS) >= 8:
            _DIGESTS.clear()
        digest = _DIGESTS[data] = hashlib.sha256(data).hexdigest()
    return digest


def cache_key(data: bytes, fuel: bool, epoch: bool = False) -> str:
    digest = _sha256(data)
    mode = ("fuel" if fuel else "plain") + ("-epoch" if epoch else "")
    return f"{digest}-wasmtime{wasmtime_version()}-{mode}"


def compile_module(
    data: bytes, fuel: bool, directory: Path | None = None, epoch: bool = False
) -> wasmtime.Module:
    """Compile ``data`` (raising ``wasmtime.WasmtimeError``), using the caches when possible."""
    key = cache_key(data, fuel, epoch)
    module = _MODULES.get(key)
    if module is not None:
        STATS["memory_hits"] += 1
        return module
    eng = engine(fuel, epoch)
    path = (directory or cache_dir()) / f"{key}.cwasm"
    module = _load_serialized(eng, path)
    if module is None:
        module = wasmtime.Module(eng, data)
        STATS["compiles"] += 1
        _store_serialized(module, path)
    else:
        STATS["disk_hits"] += 1
    _MODULES[key] = module
    return module


def forget_in_memory() -> None:
    """Drop the in-process cache (benchmarks use this to measure the disk cache)."""
    _MODULES.clear()


def _load_serialized(eng: wasmtime.Engine, path: Path) -> wasmtime.Module | None:
    """The serialized module at ``path`` if it is a regular file of ours (or root's) that no one
    else may write; a link, a FIFO or another writer's file is ignored (recompiled): it is
    machine code that runs in this process."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_mode & 0o022 or st.st_uid not in (os.geteuid(), 0):
            return None
        raw = b"".join(iter(lambda: os.read(fd, 1 << 20), b""))
    except OSError:
        return None
    finally:
        os.close(fd)
    try:
        return wasmtime.Module.deserialize(eng, raw)
    except Exception:
        return None


def _store_serialized(module: wasmtime.Module, path: Path) -> None:
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".cwasm")
        with os.fdopen(fd, "wb") as out:
            out.write(module.serialize())
        os.replace(tmp, path)
    except OSError:
        pass  # the cache is an optimisation; a read-only home is fine
