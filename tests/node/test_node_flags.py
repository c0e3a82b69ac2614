"""``wasm-agent node`` takes the cache flags ``proxy`` takes, from the one configuration table:
``--cache-max-bytes`` and ``--fetch-backoff`` (and their variables), the flag winning; and its
own ``--max-fetches``."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest

from wasm_agent.node.command import add_arguments, settings_from_args

ROOT = Path(__file__).resolve().parents[2]


def _settings(argv: list[str], env: dict[str, str], monkeypatch: pytest.MonkeyPatch):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return settings_from_args(parser.parse_args(["--csi-endpoint", "unix:/tmp/x.sock", *argv]))


@pytest.mark.parametrize(
    ("argv", "env", "expected"),
    [
        ([], {}, 10.0),  # Envoy's 10 s, as proxy's default
        (["--fetch-backoff", "30s"], {}, 30.0),
        ([], {"WASM_AGENT_FETCH_BACKOFF": "0"}, 0.0),
        (["--fetch-backoff", "2m"], {"WASM_AGENT_FETCH_BACKOFF": "5s"}, 120.0),
    ],
)
def test_fetch_backoff_flag_and_variable(
    argv: list[str], env: dict[str, str], expected: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("WASM_AGENT_FETCH_BACKOFF", raising=False)
    assert _settings(argv, env, monkeypatch).cache.fetch_backoff == expected


def test_a_bad_backoff_is_a_usage_error(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "wasm_agent", "node", "--csi-endpoint",
         f"unix:{tmp_path / 'csi.sock'}", "--cache-dir", str(tmp_path / "cache"),
         "--fetch-backoff", "soon"],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "--fetch-backoff" in result.stderr and "soon" in result.stderr
    assert not (tmp_path / "csi.sock").exists()


def test_max_fetches_flag(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert _settings([], {}, monkeypatch).max_fetches == 16
    assert _settings(["--max-fetches", "32"], {}, monkeypatch).max_fetches == 32
    for bad in ("1", "many"):
        result = subprocess.run(
            [sys.executable, "-m", "wasm_agent", "node", "--csi-endpoint",
             f"unix:{tmp_path / 'csi.sock'}", "--cache-dir", str(tmp_path / "cache"),
             "--max-fetches", bad],
            capture_output=True, text=True, timeout=60, cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )  # fmt: skip
        assert result.returncode == 2, result.stderr
        assert f"--max-fetches: expected an integer of at least 2, got '{bad}'" in result.stderr
        assert not (tmp_path / "csi.sock").exists()
