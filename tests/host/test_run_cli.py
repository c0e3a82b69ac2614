"""``wasm-agent run``: one exchange printed; exit 1 on an unreadable or unloadable module, 2 on
usage errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.host.wat import BASIC, plugin

PLUGIN = (
    BASIC
    + """
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (drop (call $proxy_add_header_map_value (i32.const 0) (i32.const 1024) (i32.const 5)
                (i32.const 1030) (i32.const 3)))
    (call $logmem (i32.const 1040) (i32.const 7))
    (i32.const 0))
  (func (export "proxy_on_response_headers") (param i32 i32 i32) (result i32)
    (drop (call $proxy_add_header_map_value (i32.const 2) (i32.const 1024) (i32.const 5)
                (i32.const 1030) (i32.const 3)))
    (i32.const 0))
"""
)


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "wasm_agent", "run", *args],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


@pytest.fixture(scope="module")
def module_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("run") / "p.wasm"
    path.write_bytes(plugin(PLUGIN, data={1024: "x-via", 1030: "run", 1040: "request"}))
    return path


def test_run_prints_upstream_client_and_logs(module_path: Path) -> None:
    result = _run(str(module_path), "-X", "POST", "--path", "/x", "-H", "x-a: 1",
                  "--body", "hi", "--response-status", "201", "-H-resp", "x-r: 2")  # fmt: skip
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "== upstream request ==" in out and ":method: POST" in out and "x-via: run" in out
    assert "x-a: 1" in out and "\nhi\n" in out
    assert ":status: 201" in out and "x-r: 2" in out
    assert "[info] request" in out


def test_run_json(module_path: Path, tmp_path: Path) -> None:
    (tmp_path / "cfg").write_text("config!")
    result = _run(str(module_path), "--json", "--config", f"@{tmp_path / 'cfg'}")
    data = json.loads(result.stdout)
    assert ["x-via", "run"] in [list(p) for p in data["upstream"]["headers"]]
    assert data["client"]["headers"][0] == [":status", "200"]
    assert data["logs"] == [{"level": "INFO", "message": "request"}]


def test_run_load_failure_exits_1(tmp_path: Path) -> None:
    bad = tmp_path / "bad.wasm"
    bad.write_bytes(plugin(BASIC, version=""))
    result = _run(str(bad))
    assert result.returncode == 1
    assert "Missing or unknown Proxy-Wasm ABI version" in result.stderr


def test_run_usage_errors_exit_2(module_path: Path, tmp_path: Path) -> None:
    assert _run(str(module_path), "-H", "no-colon").returncode == 2
    assert _run(str(module_path), "--config", f"@{tmp_path / 'missing'}").returncode == 2
    assert _run(str(tmp_path / "missing.wasm")).returncode == 1  # the module: the operation
    assert _run().returncode == 2
