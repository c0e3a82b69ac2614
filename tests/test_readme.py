"""The README's code runs as written."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import wasmtime

ROOT = Path(__file__).resolve().parents[1]
CLEAN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def _python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_harness_example_passes(tmp_path: Path) -> None:
    """The pytest-harness example, run against the demo plugin it names."""
    plugin = tmp_path / "plugin.wasm"
    plugin.write_bytes(wasmtime.wat2wasm((ROOT / "wasm_agent/demo/plugin.wat").read_text()))
    [block] = [b for b in _python_blocks((ROOT / "README.md").read_text()) if "start_plugin" in b]
    namespace: dict[str, object] = {}
    exec(compile(block.replace('"plugin.wasm"', repr(str(plugin))), "README.md", "exec"), namespace)
    tests = [f for name, f in namespace.items() if name.startswith("test_") and callable(f)]
    assert len(tests) == 2
    for test in tests:
        test()


def _setup_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Set up", 1)[1].split("\n## ", 1)[0]
    return [block.strip() for block in re.findall(r"```sh\n(.*?)```", section, flags=re.S)]


def _fresh_checkout(destination: Path) -> Path:
    """The repository's files (committed or not, ignored ones excluded) in a new directory."""
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"],
        cwd=ROOT, capture_output=True, check=True,
    ).stdout.decode().split("\0")  # fmt: skip
    for name in filter(None, listed):
        source = ROOT / name
        if source.is_file():
            target = destination / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    return destination


def test_readme_has_exactly_two_setup_commands() -> None:
    commands = _setup_commands()
    assert len(commands) == 2
    assert commands[1] == "bash scripts/test"
    assert "bash scripts/test" in (ROOT / ".ci" / "run").read_text()


@pytest.mark.slow
def test_readme_commands_work_as_written_in_a_fresh_virtualenv(tmp_path: Path) -> None:
    """Both set-up commands, verbatim, in a fresh copy with no virtualenv.

    The second (the test command) runs with ``PYTEST_ADDOPTS`` naming one small test file, so
    the suite does not recurse into itself; everything else it does (install, lint) is real.
    """
    demo, tests = _setup_commands()
    checkout = _fresh_checkout(tmp_path / "repo")
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("VIRTUAL_ENV", "PYTEST", "PYENV", "CONDA", "WASM_AGENT_"))
        and k not in ("PYTHONPATH", "PYTHONHOME")
    }
    # The machine's default PATH: system directories only, no virtualenv, pyenv or ~/.local, so
    # a hand-installed envoy or wasm-agent elsewhere cannot stand in for the checkout's own.
    env["PATH"] = CLEAN_PATH
    for tool in ("envoy", "wasm-agent"):
        found = shutil.which(tool, path=CLEAN_PATH)
        assert found is None, f"{tool} is installed outside any virtualenv at {found}: remove it"
    first = subprocess.run(
        ["bash", "-c", demo], cwd=checkout, env=env, capture_output=True, text=True, timeout=600
    )
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "x-wasm-agent-demo: hello" in first.stdout
    assert "NACK" in first.stdout
    assert "Demo OK" in first.stdout
    venv_bin = checkout / ".venv" / "bin"
    assert (venv_bin / "wasm-agent").exists()
    [binary] = re.findall(r"envoy binary\s+(\S+)", first.stdout)
    assert Path(binary) == venv_bin / "envoy", f"Envoy came from outside the checkout: {binary}"
    python_home = subprocess.run(
        [str(venv_bin / "python"), "-c", "import sys, wasm_agent; print(sys.prefix); "
         "print(wasm_agent.__file__)"],
        env=env, capture_output=True, text=True, check=True, cwd=tmp_path,
    ).stdout.split()  # fmt: skip
    assert Path(python_home[0]) == checkout / ".venv"
    assert Path(python_home[1]).is_relative_to(checkout), python_home[1]

    env["PYTEST_ADDOPTS"] = "tests/agent/test_cli.py -p no:cacheprovider"
    second = subprocess.run(
        ["bash", "-c", tests], cwd=checkout, env=env, capture_output=True, text=True, timeout=900
    )
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    summary = second.stdout[-2000:]  # any count: adding a test to test_cli.py must not break this
    assert re.search(r"\b[1-9]\d* passed\b", summary), summary
    assert not re.search(r"\b\d+ (failed|errors?|skipped|xfailed)\b", summary), summary
