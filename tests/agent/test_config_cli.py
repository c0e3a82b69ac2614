"""Bad values of variables and flags, through the real command: exit 2 with a clear message."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def wasm_agent(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("WASM_", "ISTIO_WASM"))}
    return subprocess.run(
        [sys.executable, "-m", "wasm_agent", *args],
        capture_output=True, text=True, timeout=60, cwd=REPO,
        env={**base, "PYTHONPATH": str(REPO), **env},
    )  # fmt: skip


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        (("proxy", "--help"), {"WASM_AGENT_MAX_STREAMS": "abc"},
         "WASM_AGENT_MAX_STREAMS: invalid value 'abc': expected an integer >= 1"),
        (("proxy", "--help"), {"WASM_AGENT_PLAINTEXT": "banana"},
         "WASM_AGENT_PLAINTEXT: invalid value 'banana': expected one of true, false"),
        (("proxy",), {"WASM_AGENT_FETCH_FAILURE": "banana"},
         "WASM_AGENT_FETCH_FAILURE: invalid value 'banana': expected one of nack, deny"),
        (("prefetch", "file:///nonexistent.wasm"), {"WASM_HTTP_REQUEST_MAX_RETRIES": "-1"},
         "WASM_HTTP_REQUEST_MAX_RETRIES: invalid value '-1': expected an integer >= 0"),
        (("check", "https://example.invalid/x.wasm"), {"WASM_HTTP_REQUEST_TIMEOUT": "soon"},
         "WASM_HTTP_REQUEST_TIMEOUT: invalid value 'soon'"),
        (("proxy", "--plaintext", "--discovery-address", "nocolon"), {},
         "argument --discovery-address: invalid value 'nocolon': expected unix:PATH or HOST:PORT"),
    ],
)  # fmt: skip
def test_bad_values_exit_2_naming_what_is_wrong(
    args: tuple[str, ...], env: dict[str, str], expected: str
) -> None:
    result = wasm_agent(*args, **env)
    assert result.returncode == 2, result.stderr
    assert expected in result.stderr
    assert "Traceback" not in result.stderr


def test_help_lines_name_the_variables() -> None:
    result = wasm_agent("prefetch", "--help")
    assert result.returncode == 0
    help_text = " ".join(result.stdout.split())
    assert "[env WASM_AGENT_CACHE_DIR]" in help_text
    assert "[env WASM_AGENT_VERIFY_POLICY]" in help_text
