"""The CLI entry point: help, version, exit codes."""

from __future__ import annotations

import subprocess
import sys


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "wasm_agent", *args], capture_output=True, text=True, timeout=60
    )


def test_help_lists_commands_and_exits_0() -> None:
    result = _cli("--help")
    assert result.returncode == 0
    assert "usage: wasm-agent" in result.stdout


def test_version() -> None:
    result = _cli("--version")
    assert result.returncode == 0
    assert result.stdout.startswith("wasm-agent ")


def test_unknown_command_is_usage_error() -> None:
    result = _cli("no-such-command")
    assert result.returncode == 2
    assert "unknown command 'no-such-command'" in result.stderr


def test_no_command_is_usage_error() -> None:
    assert _cli().returncode == 2
