"""Logging flags on every command: ``--log-level``/``--log-format`` (and their variables),
accepted after ``cache``'s subcommand too, and ``warning`` by default on a terminal."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.modserver import ModServer
from tests.support.wasm import minimal_module

COMMANDS = ("prefetch", "proxy", "check", "run", "cache", "demo")


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "wasm_agent", *args],
        capture_output=True, text=True, timeout=60, env={**os.environ, **(env or {})},
    )  # fmt: skip


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_log_flags_their_variables_and_the_exit_rule(command: str) -> None:
    out = _cli(command, "--help").stdout
    assert "--log-format text|json" in out and "[env WASM_AGENT_LOG_FORMAT]" in out
    assert "--log-level debug|info|warning|error" in out and "WASM_AGENT_LOG_LEVEL]" in out
    assert "Exit status: 0 success; 1 the operation failed" in out


def test_log_format_json_writes_json_lines(tmp_path: Path) -> None:
    with ModServer() as server:
        url = server.serve("/m.wasm", minimal_module())
        env = {"WASM_AGENT_CACHE_DIR": str(tmp_path / "c")}
        result = _cli("prefetch", url, "--log-format", "json", "--log-level", "info", env=env)
        by_env = _cli(
            "prefetch", url,
            env={"WASM_AGENT_CACHE_DIR": str(tmp_path / "d"), "WASM_AGENT_LOG_FORMAT": "json"},
        )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    assert lines and all({"time", "level", "logger", "msg"} <= set(doc) for doc in lines)
    assert any(doc["msg"] == "cached a Wasm module" for doc in lines)
    assert by_env.returncode == 0, by_env.stderr
    assert '"msg":"cached a Wasm module"' in by_env.stderr


def test_bad_log_values_are_usage_errors() -> None:
    result = _cli("cache", "ls", env={"WASM_AGENT_LOG_FORMAT": "xml"})
    assert result.returncode == 2
    assert "WASM_AGENT_LOG_FORMAT: invalid value 'xml': expected one of text, json" in result.stderr
    assert _cli("run", "x.wasm", "--log-level", "loud").returncode == 2


@pytest.mark.parametrize("action", ["ls", "verify", "prune"])
def test_cache_takes_log_flags_after_the_action(tmp_path: Path, action: str) -> None:
    result = _cli(
        "cache", action, "--cache-dir", str(tmp_path), "--log-level", "debug", "--log-format",
        "json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    before = _cli("cache", "--log-level", "debug", action, "--cache-dir", str(tmp_path))
    assert before.returncode == 0, before.stderr


def _on_a_terminal(args: list[str], env: dict[str, str]) -> tuple[int, str]:
    """Run with stdout and stderr on a pseudo-terminal; return (status, everything written)."""
    leader, follower = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "wasm_agent", *args],
        stdin=subprocess.DEVNULL, stdout=follower, stderr=follower, env={**os.environ, **env},
    )  # fmt: skip
    os.close(follower)
    chunks = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    return process.wait(timeout=60), b"".join(chunks).decode("utf-8", "replace")


def test_prefetch_on_a_terminal_logs_warnings_only(tmp_path: Path) -> None:
    with ModServer() as server:
        url = server.serve("/m.wasm", minimal_module())
        env = {"WASM_AGENT_CACHE_DIR": str(tmp_path / "c")}
        status, text = _on_a_terminal(["prefetch", url], env)
        assert status == 0, text
        assert " info " not in text and "cached a Wasm module" not in text
        assert url in text  # the result line
        forced, text = _on_a_terminal(["prefetch", url, "--log-level", "info"], {
            "WASM_AGENT_CACHE_DIR": str(tmp_path / "d")})  # fmt: skip
        assert forced == 0 and "cached a Wasm module" in text
        piped = _cli("prefetch", url, "--cache-dir", str(tmp_path / "e"))  # not a terminal
    assert piped.returncode == 0 and " info " in piped.stderr
