"""``wasm-agent demo`` as CI runs it: a real process with real Envoy, non-interactive.

Checks the story's key facts (the module fetched and rewritten, the ACK, the plugin's header in
a real response, the NACK's error_detail, Envoy still serving), that no process or temporary
directory outlives the demo (also after Ctrl-C with ``--keep-running``), and the message when
Envoy is missing.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import wasmtime

from wasm_agent.demo.envoy import EnvoyNotFound, find_envoy
from wasm_agent.demo.resources import plugin_wat
from wasm_agent.demo.runner import WRONG_SHA256

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.envoy, pytest.mark.timeout(90)]


def demo(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "wasm_agent", "demo", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        env=env,
        stdin=subprocess.DEVNULL,
    )


def processes_mentioning(text: str) -> list[int]:
    """PIDs whose command line contains ``text``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if text in cmdline:
                found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_demo_tells_the_whole_story_and_cleans_up() -> None:
    started = time.monotonic()
    result = demo()
    elapsed = time.monotonic() - started
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    sha = hashlib.sha256(wasmtime.wat2wasm(plugin_wat())).hexdigest()
    # the module: fetched by URL, checked, rewritten to the cached file
    assert re.search(r"url\s+http://127\.0\.0\.1:\d+/plugins/demo-plugin\.wasm", out)
    assert f"{sha}  (matches the config)" in out
    assert re.search(r"bytes\s+\d+", out)
    assert re.search(r"time\s+\d+ ms", out)
    assert re.search(rf"local\.filename /tmp/wasm-agent-demo-\w+/cache/modules/{sha}\.wasm", out)
    assert re.search(r"ACK\s+version_info=v1 nonce=\d+", out)
    # the plugin's header in a real response through Envoy, before and after the bad push
    assert out.count("x-wasm-agent-demo: hello  (added by the plugin)") == 2
    assert out.count("status         200 OK") == 2
    # the bad push: the NACK the control plane recorded, with Envoy's last good version
    assert re.search(r"NACK\s+nonce=\d+ version_info=v1 \(last good\)", out)
    detail = re.search(r"error_detail\s+(.*)", out)
    assert detail is not None
    assert "ECDS resource 'demo-plugin'" in detail.group(1)
    assert f"sha256 mismatch: expected {WRONG_SHA256}" in detail.group(1)
    assert f"got {sha}" in detail.group(1)
    assert "config_dump    ECDS version_info=v1" in out
    assert "Envoy keeps serving ECDS v1" in out
    assert "Demo OK" in out
    # the steps are numbered in order
    numbers = [int(n) for n in re.findall(r"^(\d+)\. ", out, re.MULTILINE)]
    assert numbers == list(range(1, 10))
    # nothing outlives the demo
    workdir = re.search(r"(/tmp/wasm-agent-demo-\w+)", out).group(1)
    assert not Path(workdir).exists()
    assert processes_mentioning(workdir) == []
    envoy_pid = int(re.search(r"envoy\s+\S+ pid (\d+)", out).group(1))
    assert not alive(envoy_pid)
    assert elapsed < 30
    assert "fork" not in result.stderr  # no gRPC fork warning


@pytest.mark.parametrize("number", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_keep_running_prints_curl_and_a_signal_stops_everything(number: int) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "wasm_agent", "demo", "--keep-running"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        cwd=REPO,
    )
    lines: list[str] = []
    try:
        assert process.stdout is not None
        deadline = time.monotonic() + 45
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line:
                break
            lines.append(line)
            if line.startswith("Press Ctrl-C"):
                break
        out = "".join(lines)
        assert "Press Ctrl-C to stop and clean up." in out, out
        curl = re.search(r"curl -i (http://127\.0\.0\.1:\d+/)", out)
        assert curl is not None, out
        with urllib.request.urlopen(curl.group(1), timeout=5) as response:
            assert response.status == 200
            assert response.headers["x-wasm-agent-demo"] == "hello"
        envoy_pid = int(re.search(r"envoy\s+\S+ pid (\d+)", out).group(1))
        workdir = re.search(r"(/tmp/wasm-agent-demo-\w+)", out).group(1)
        assert alive(envoy_pid)
        process.send_signal(number)
        rest, _err = process.communicate(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, rest
    assert f"Interrupted ({signal.Signals(number).name}); stopping." in rest
    assert "Stopped Envoy, wasm-agent, the control plane and the servers." in rest
    assert not alive(envoy_pid)
    assert not Path(workdir).exists()
    assert processes_mentioning(workdir) == []


def test_a_missing_envoy_named_by_the_environment_is_a_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "no-envoy-here"
    result = demo(env={**os.environ, "WASM_AGENT_ENVOY": str(missing)})
    assert result.returncode == 1
    assert f"WASM_AGENT_ENVOY={missing}: not an executable file" in result.stderr
    assert result.stdout == ""
    flag = demo("--envoy", str(missing))
    assert flag.returncode == 1
    assert f"--envoy {missing}: not an executable file" in flag.stderr


def _fake_envoy(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "envoy"
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(0o755)
    return path


def test_envoy_is_found_next_to_python_before_path(tmp_path: Path) -> None:
    venv_envoy = _fake_envoy(tmp_path / "venv" / "bin")
    path_envoy = _fake_envoy(tmp_path / "on-path")
    environ = {"PATH": str(path_envoy.parent)}
    python = str(tmp_path / "venv" / "bin" / "python")
    assert find_envoy(environ=environ, python=python) == str(venv_envoy)
    venv_envoy.unlink()
    assert find_envoy(environ=environ, python=python) == str(path_envoy)
    named = _fake_envoy(tmp_path / "named")
    assert find_envoy(environ={**environ, "WASM_AGENT_ENVOY": str(named)}, python=python) == str(
        named
    )
    assert find_envoy(str(named), environ={"WASM_AGENT_ENVOY": "/nope"}, python=python) == str(
        named
    )


def test_a_missing_envoy_error_says_where_it_looked(tmp_path: Path) -> None:
    python = str(tmp_path / "venv" / "bin" / "python")
    with pytest.raises(EnvoyNotFound) as caught:
        find_envoy(environ={"PATH": str(tmp_path / "empty")}, python=python)
    message = str(caught.value)
    assert "Envoy is not installed: pip install 'wasm-agent[envoy]'" in message
    assert str(tmp_path / "venv" / "bin" / "envoy") in message
    assert f"PATH={tmp_path / 'empty'}" in message
    assert "--envoy PATH or WASM_AGENT_ENVOY" in message


def test_demo_finds_envoy_beside_python_with_an_empty_path(tmp_path: Path) -> None:
    """The fresh-machine case: Envoy only in the virtualenv, PATH without it."""
    assert (Path(sys.executable).parent / "envoy").exists(), "tests run from the venv's Python"
    result = demo(env={**os.environ, "PATH": str(tmp_path)})
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "Demo OK" in result.stdout


def test_plugin_source_exports_the_proxy_wasm_entry_points() -> None:
    module = wasmtime.Module(wasmtime.Engine(), wasmtime.wat2wasm(plugin_wat()))
    exports = {e.name for e in module.exports}
    assert {
        "proxy_abi_version_0_2_1",
        "proxy_on_memory_allocate",
        "proxy_on_context_create",
        "proxy_on_vm_start",
        "proxy_on_configure",
        "proxy_on_response_headers",
        "memory",
    } <= exports
    assert {(i.module, i.name) for i in module.imports} == {("env", "proxy_add_header_map_value")}


def test_a_failing_step_is_named_exit_1_and_processes_stopped() -> None:
    # the agent may not fetch from 127.0.0.1: it NACKs the very first config
    env = {**os.environ, "BLOCKED_CIDRS_IN_WASM_FETCH": "127.0.0.0/8"}
    result = demo("--timeout", "30", env=env)  # per step; the NACK itself comes at once
    out = result.stdout
    assert result.returncode == 1, out
    assert (
        "Demo FAILED at step 3 (wasm-agent fetches the module, checks its sha256 and compiles "
        "it): fetch failed: connection to 127.0.0.1 blocked" in out
    )
    assert "Demo OK" not in out
    workdir = re.search(r"Logs and configs kept in (/tmp/wasm-agent-demo-\w+)", out).group(1)
    try:
        assert f"--- {workdir}/agent.log" in result.stderr  # log tails for CI
        assert processes_mentioning(workdir) == []
        envoy_pid = int(re.search(r"envoy\s+\S+ pid (\d+)", out).group(1))
        assert not alive(envoy_pid)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
