"""Helpers for cache and prefetch tests that run the CLI as a real process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def prefetch_cmd(cache_dir: Path, *args: str) -> list[str]:
    """The argv of a ``wasm-agent prefetch`` child process using ``cache_dir``."""
    return [sys.executable, "-m", "wasm_agent", "prefetch", "--cache-dir", str(cache_dir), *args]


def run_prefetch(cache_dir: Path, *args: str, **kw) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        prefetch_cmd(cache_dir, *args), capture_output=True, text=True, timeout=60, cwd=REPO, **kw
    )


def module_files(cache_dir: Path) -> list[Path]:
    """Everything in ``modules/`` (complete modules and temp files alike)."""
    directory = cache_dir / "modules"
    return sorted(directory.iterdir()) if directory.is_dir() else []
