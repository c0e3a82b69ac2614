"""Build the conformance test plugins from their sources in ``tests/plugins`` (and cache them).

Binaries are never committed: ``plugin("c/headers")`` compiles ``tests/plugins/c/headers.c``
with Debian clang + wasi-libc (``--target=wasm32-wasi -mexec-model=reactor``),
``plugin("wat/add_header")`` assembles ``tests/plugins/wat/add_header.wat`` with
``wasmtime.wat2wasm``, and ``plugin("as/index")`` compiles ``tests/plugins/as/assembly/index.ts``
with the local AssemblyScript (``npx asc``, ``assemblyscript@0.14.9`` +
``@solo-io/proxy-runtime@0.1.8``).

Outputs are cached by the hash of everything that goes into them (sources, the C header, the
compiler command, the npm lockfile) under ``$WASM_AGENT_PLUGIN_CACHE`` or
``~/.cache/wasm-agent-test-plugins``; a file lock per output keeps concurrent pytest-xdist workers
from building the same plugin twice, and outputs are renamed into place, so a reader never sees a
partial file.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import wasmtime

PLUGINS_DIR = Path(__file__).resolve().parents[1] / "plugins"
AS_DIR = PLUGINS_DIR / "as"
C_FLAGS = ["--target=wasm32-wasi", "-mexec-model=reactor", "-O2", "-Wall", "-Wno-unused-function"]
AS_FLAGS = ["--use", "abort=abort_proc_exit", "-O3", "--runtime", "full"]


class PluginBuildError(RuntimeError):
    """A plugin source did not build; the message carries the compiler output."""


def cache_dir() -> Path:
    """Where built plugins are kept between runs."""
    configured = os.environ.get("WASM_AGENT_PLUGIN_CACHE")
    path = Path(configured) if configured else Path.home() / ".cache" / "wasm-agent-test-plugins"
    path.mkdir(parents=True, exist_ok=True)
    return path


def plugin(name: str) -> Path:
    """Path of the built module for ``name`` ("wat/<file>", "c/<file>" or "as/<file>")."""
    kind, _, stem = name.partition("/")
    if kind == "wat":
        return _build_wat(stem)
    if kind == "c":
        return _build_c(stem)
    if kind == "as":
        return _build_as(stem)
    raise ValueError(f"unknown plugin kind in {name!r}: expected wat/, c/ or as/")


def plugin_bytes(name: str) -> bytes:
    return plugin(name).read_bytes()


def _digest(*parts: bytes) -> str:
    hasher = hashlib.sha256()
    for part in parts:
        hasher.update(len(part).to_bytes(8, "little"))
        hasher.update(part)
    return hasher.hexdigest()[:24]


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    lock_path = path.with_name(path.name + ".lock")
    with open(lock_path, "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _cached(stem: str, key: str, build: Callable[[Path], object]) -> Path:
    """Return the cached output for ``key``, building it with ``build(tmp_path)`` if absent."""
    out = cache_dir() / f"{stem}-{key}.wasm"
    if out.exists():
        return out
    with _locked(out):
        if out.exists():
            return out
        fd, tmp_name = tempfile.mkstemp(dir=out.parent, prefix=f".{stem}-", suffix=".wasm")
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            build(tmp)
            wasmtime.Module.validate(wasmtime.Engine(), tmp.read_bytes())
            tmp.replace(out)
        finally:
            tmp.unlink(missing_ok=True)
    return out


def _build_wat(stem: str) -> Path:
    source = PLUGINS_DIR / "wat" / f"{stem}.wat"
    text = source.read_text()
    key = _digest(b"wat", text.encode())

    def build(tmp: Path) -> None:
        tmp.write_bytes(wasmtime.wat2wasm(text))

    return _cached(f"wat-{stem}", key, build)


def _clang() -> str:
    clang = shutil.which("clang")
    if clang is None:
        raise PluginBuildError("clang not found: apt-get install clang lld wasi-libc")
    return clang


def _build_c(stem: str) -> Path:
    source = PLUGINS_DIR / "c" / f"{stem}.c"
    header = PLUGINS_DIR / "c" / "proxy_wasm.h"
    clang = _clang()
    version = subprocess.run([clang, "--version"], capture_output=True, check=True).stdout
    key = _digest(
        b"c", source.read_bytes(), header.read_bytes(), " ".join(C_FLAGS).encode(), version
    )

    def build(tmp: Path) -> None:
        result = subprocess.run(
            [clang, *C_FLAGS, "-o", str(tmp), str(source)], capture_output=True, text=True
        )
        if result.returncode != 0:
            raise PluginBuildError(f"clang failed for {source}:\n{result.stderr}")

    return _cached(f"c-{stem}", key, build)


def _build_as(stem: str) -> Path:
    source = AS_DIR / "assembly" / f"{stem}.ts"
    lock = (AS_DIR / "package-lock.json").read_bytes()
    sources = b"".join(
        path.name.encode() + path.read_bytes() for path in sorted((AS_DIR / "assembly").glob("*"))
    )
    key = _digest(b"as", source.name.encode(), sources, lock, " ".join(AS_FLAGS).encode())

    def build(tmp: Path) -> None:
        if not (AS_DIR / "node_modules" / "assemblyscript").exists():
            with _locked(cache_dir() / "npm-ci"):
                if not (AS_DIR / "node_modules" / "assemblyscript").exists():
                    _run(["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"], AS_DIR)
        asc = AS_DIR / "node_modules" / ".bin" / "asc"
        _run([str(asc), f"assembly/{stem}.ts", "-b", str(tmp), *AS_FLAGS], AS_DIR)

    return _cached(f"as-{stem}", key, build)


def _run(command: list[str], cwd: Path) -> None:
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    if result.returncode != 0:
        raise PluginBuildError(
            f"{' '.join(command)} failed in {cwd}:\n{result.stdout}\n{result.stderr}"
        )
