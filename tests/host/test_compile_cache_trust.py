"""The reference host's compiled-module cache holds machine code that runs in this process: a
file is loaded only if it is a regular file of ours that no one else may write. A link, a FIFO or
a file others may write, planted under a module's name, is ignored and the module recompiled."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import wasmtime

from tests.support.wasm import wat_to_wasm
from wasm_agent.host import compile as host_compile

A = wat_to_wasm('(module (func (export "which") (result i32) (i32.const 1)))')
B = wat_to_wasm('(module (func (export "which") (result i32) (i32.const 2)))')


def _which(module: wasmtime.Module, fuel: bool) -> int:
    store = wasmtime.Store(host_compile.engine(fuel, False))
    if fuel:
        store.set_fuel(10_000)
    instance = wasmtime.Instance(store, module, [])
    which = instance.exports(store)["which"]
    assert isinstance(which, wasmtime.Func)
    return int(which(store))


def _planted(directory: Path, how: str) -> Path:
    """B's compiled code under A's name, planted ``how``."""
    host_compile.forget_in_memory()
    host_compile.compile_module(B, fuel=True, directory=directory)
    b_path = directory / f"{host_compile.cache_key(B, True)}.cwasm"
    a_path = directory / f"{host_compile.cache_key(A, True)}.cwasm"
    if how == "others-may-write":
        a_path.write_bytes(b_path.read_bytes())
        os.chmod(a_path, 0o666)
    elif how == "link":
        a_path.symlink_to(b_path)
    elif how == "fifo":
        os.mkfifo(a_path, 0o600)
    host_compile.forget_in_memory()
    return a_path


@pytest.mark.parametrize("how", ["others-may-write", "link", "fifo"])
def test_a_planted_compiled_module_is_not_loaded(tmp_path: Path, how: str) -> None:
    directory = tmp_path / "host"
    _planted(directory, how)
    module = host_compile.compile_module(A, fuel=True, directory=directory)
    assert _which(module, fuel=True) == 1  # A's own code, compiled again
    host_compile.forget_in_memory()


def test_our_own_compiled_module_is_reused_and_the_directory_is_private(tmp_path: Path) -> None:
    directory = tmp_path / "host"
    host_compile.forget_in_memory()
    host_compile.compile_module(A, fuel=True, directory=directory)
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    host_compile.forget_in_memory()
    hits = host_compile.STATS["disk_hits"]
    module = host_compile.compile_module(A, fuel=True, directory=directory)
    assert host_compile.STATS["disk_hits"] == hits + 1 and _which(module, fuel=True) == 1
    host_compile.forget_in_memory()
