"""The README's code runs as written."""

from __future__ import annotations

import re
from pathlib import Path

import wasmtime

ROOT = Path(__file__).resolve().parents[1]


def _python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_harness_example_passes(tmp_path: Path) -> None:
    """The pytest-harness example, run against the demo plugin it names."""
    plugin = tmp_path / "plugin.wasm"
    plugin.write_bytes(wasmtime.wat2wasm((ROOT / "wasm_agent/agent/demo/plugin.wat").read_text()))
    [block] = [b for b in _python_blocks((ROOT / "README.md").read_text()) if "start_plugin" in b]
    namespace: dict[str, object] = {}
    exec(compile(block.replace('"plugin.wasm"', repr(str(plugin))), "README.md", "exec"), namespace)
    tests = [f for name, f in namespace.items() if name.startswith("test_") and callable(f)]
    assert len(tests) == 2
    for test in tests:
        test()
