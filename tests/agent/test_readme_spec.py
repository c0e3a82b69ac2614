"""The README's behaviour spec passes, as written, against the example plugin it describes
(``examples/tenant/plugin.wat``, compiled here), and ``examples/tenant/spec.yaml`` is that spec."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import wasmtime

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "tenant"


def _readme_spec() -> str:
    blocks = re.findall(r"```yaml\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    [spec] = [b for b in blocks if "\ncases:" in b]
    return spec


def test_the_shipped_spec_is_the_readmes() -> None:
    assert (EXAMPLE / "spec.yaml").read_text() == _readme_spec()


def test_readme_spec_passes_against_the_example_plugin(tmp_path: Path) -> None:
    plugin = tmp_path / "plugin.wasm"
    plugin.write_bytes(wasmtime.wat2wasm((EXAMPLE / "plugin.wat").read_text()))
    spec = tmp_path / "spec.yaml"
    spec.write_text(_readme_spec())
    result = subprocess.run(
        [sys.executable, "-m", "wasm_agent", "check", str(plugin), "--spec", str(spec),
         "--format", "json", "--cache-dir", str(tmp_path / "cache")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    [module] = json.loads(result.stdout)["modules"]
    cases = [c for c in module["checks"] if c["section"] == "spec"]
    assert [(c["name"], c["status"]) for c in cases] == [
        ("adds the tenant header", "pass"),
        ("admin is denied", "pass"),
    ]


def test_check_and_run_take_the_wat_source_as_the_readme_says() -> None:
    checked = subprocess.run(
        [sys.executable, "-m", "wasm_agent", "check", str(EXAMPLE / "plugin.wat"), "--spec",
         str(EXAMPLE / "spec.yaml")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "1 module, 0 failed;" in checked.stdout
    ran = subprocess.run(
        [sys.executable, "-m", "wasm_agent", "run", str(EXAMPLE / "plugin.wat"), "--config",
         '{"deny": ["/admin"]}', "--path", "/admin"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    assert ":status: 403" in ran.stdout and "denied" in ran.stdout
    assert "requests_total 1" in ran.stdout
