"""``wasm-agent cache`` on a cache directory that cannot be one: a clean error and exit 1."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


def _cache(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "wasm_agent", "cache", *args],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


@pytest.mark.parametrize("action", ["ls", "verify", "prune"])
def test_a_file_as_cache_directory_fails_cleanly(tmp_path: Path, action: str) -> None:
    file = tmp_path / "file"
    file.write_text("not a cache")
    result = _cache(action, "--cache-dir", str(file))
    assert result.returncode == 1
    assert result.stderr == f"wasm-agent cache {action}: {file}: not a directory\n"
    below = _cache(action, "--cache-dir", str(file / "c"))
    assert below.returncode == 1
    assert f"{file / 'c'}: cannot be a directory: {file} is not a directory" in below.stderr
    assert "Errno" not in result.stderr + below.stderr
    assert file.read_text() == "not a cache"  # nothing written


@pytest.mark.parametrize("action", ["ls", "verify", "prune"])
def test_a_missing_cache_directory_is_empty_and_not_created(tmp_path: Path, action: str) -> None:
    result = _cache(action, "--cache-dir", str(tmp_path / "none"))
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "none").exists()
