"""The complete plugin test file in docs/host.md runs as written (a separate pytest run of a bare
project holding only that file and the built ``wat/add_header`` plugin)."""

from __future__ import annotations

import re
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


DOC = Path(__file__).resolve().parents[2] / "docs" / "host.md"


def test_the_documented_test_file_passes(tmp_path: Path) -> None:
    text = DOC.read_text()
    section = text.split("## A plugin's test file", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S)
    assert code is not None, "docs/host.md lost its plugin test file"
    (tmp_path / "test_plugin.py").write_text(code.group(1))
    (tmp_path / "build").mkdir()
    (tmp_path / "build" / "plugin.wasm").write_bytes(plugin("wat/add_header").read_bytes())
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         *plugin_args(), "--wasm-plugin", "build/plugin.wasm"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 passed" in result.stdout
