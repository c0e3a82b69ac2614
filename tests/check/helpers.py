"""Modules and runners shared by the ``check`` tests (WAT inline; C and AssemblyScript plugins
from ``tests/support/plugins.py``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import wasmtime

from tests.support.plugins import plugin
from wasm_agent.check.model import ModuleReport, Status
from wasm_agent.check.runner import Options, check_module

REPO = Path(__file__).resolve().parents[2]
ALLOC = """
  (global $next (mut i32) (i32.const 8192))
  (func (export "proxy_on_memory_allocate") (param $size i32) (result i32)
    (local $ptr i32)
    (local.set $ptr (global.get $next))
    (global.set $next (i32.and (i32.add (i32.add (global.get $next) (local.get $size))
                                        (i32.const 7)) (i32.const -8)))
    (local.get $ptr))
"""


def proxy_wat(body: str = "", *, abi: str = "0_2_1", imports: str = "", alloc: bool = True) -> str:
    """A Proxy-Wasm module in WAT: ABI marker, memory, allocator, then ``body``."""
    marker = f'(func (export "proxy_abi_version_{abi}"))' if abi else ""
    return f"""(module
  {imports}
  (memory (export "memory") 2)
  {marker}
  {ALLOC if alloc else ""}
  {body}
)"""


def wasm(wat: str) -> bytes:
    return wasmtime.wat2wasm(wat)


def module_path(tmp_path: Path, wat: str, name: str = "plugin.wasm") -> Path:
    path = tmp_path / name
    path.write_bytes(wasm(wat))
    return path


C_HEADERS = "c/headers"
C_TCP = "c/tcp"
C_LOCAL_REPLY = "c/local_reply"
C_BODY = "c/body"
AS_INDEX = "as/index"


def built(name: str) -> bytes:
    """A C or AssemblyScript plugin (built once, cached by ``tests/support/plugins.py``)."""
    return plugin(name).read_bytes()


def check_bytes(
    data: bytes, config: bytes = b"", *, options: Options | None = None, root_id: str = ""
) -> ModuleReport:
    report = ModuleReport(module="test.wasm")
    check_module(report, data, config, options or Options(), root_id)
    return report


def by_id(report: ModuleReport) -> dict[str, object]:
    return {c.id: c for c in report.checks}


def statuses(report: ModuleReport) -> dict[str, Status]:
    return {c.id: c.status for c in report.checks}


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 60):
    """``python -m wasm_agent check ARGS`` as a real process."""
    full_env = dict(os.environ)
    full_env.pop("GITHUB_ACTIONS", None)
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "wasm_agent", "check", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        env=full_env,
    )
