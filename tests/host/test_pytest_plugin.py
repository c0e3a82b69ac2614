"""The pytest plugin (``wasm_agent.host.pytest_plugin``) as a plugin repository uses it: a
separate pytest run in a temporary project with nothing but a test file and a built module."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

from tests.support.plugins import plugin


def plugin_args() -> list[str]:
    """``-p wasm_agent.host.pytest_plugin`` unless the installed package's pytest11 entry point
    already loads it (loading it twice is an error)."""
    loaded = any(
        ep.value == "wasm_agent.host.pytest_plugin" for ep in entry_points(group="pytest11")
    )
    return [] if loaded else ["-p", "wasm_agent.host.pytest_plugin"]


TEST_FILE = """
import pytest


def test_exchange(wasm_plugin):
    ex = wasm_plugin.exchange({":path": "/", ":authority": "h"},
                              upstream=lambda received: ({":status": "200"}, b"ok"))
    assert ex.client.headers.to_dict()["x-wat"] == "hello"
    assert wasm_plugin.vm_count == 4  # Envoy --concurrency 2: main twice, two workers


@pytest.mark.wasm_plugin(concurrency=1)
def test_marker_options(wasm_plugin, start_wasm_plugin):
    assert wasm_plugin.vm_count == 3
    other = start_wasm_plugin(concurrency=0)
    assert other.vm_count == 1
"""


def _run(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest", *plugin_args(), "-q",
         "-p", "no:cacheprovider", *args],
        cwd=project, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_fixtures_in_a_plugin_repository(tmp_path: Path) -> None:
    (tmp_path / "test_plugin.py").write_text(TEST_FILE)
    module = tmp_path / "build" / "plugin.wasm"
    module.parent.mkdir()
    module.write_bytes(plugin("wat/add_header").read_bytes())
    result = _run(tmp_path, "--wasm-plugin", "build/plugin.wasm")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 passed" in result.stdout


def test_missing_module_is_a_clear_usage_error(tmp_path: Path) -> None:
    (tmp_path / "test_plugin.py").write_text("def test_x(wasm_plugin):\n    pass\n")
    result = _run(tmp_path)
    assert result.returncode != 0
    assert "no Proxy-Wasm module: pass --wasm-plugin PATH" in result.stdout + result.stderr
