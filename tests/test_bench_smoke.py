"""The benchmarks cannot rot: ``bench/cache_hit.py --quick`` runs to its JSON line (it crashed
on a method removed from the cache, review 3 12-C), and every other ``bench/*.py`` imports and,
when it has an argument parser, answers ``--help`` (the others run their whole bench when
started, so they are only imported here)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCHES = sorted(p.name for p in (ROOT / "bench").glob("*.py"))
DRIVER = """
import runpy, sys
path, name = sys.argv[1], sys.argv[2]
sys.argv = [path, "--help"]
try:
    runpy.run_path(path, run_name=name)
except SystemExit as stop:
    sys.exit(stop.code)
print("imported")
"""


def run(argv: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, cwd=ROOT, check=False
    )


def test_cache_hit_quick_runs_to_its_json_line() -> None:
    result = run([sys.executable, "bench/cache_hit.py", "--quick"], timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    doc = json.loads(result.stdout.strip().splitlines()[-1])
    assert doc["bench"] == "cache_hit"
    assert doc["figures"]["hit_p50_ms"] > 0 and doc["ratios"]["hit_p99_vs_rehash_p50"] > 0


@pytest.mark.parametrize("name", [b for b in BENCHES if b != "cache_hit.py"])
def test_bench_imports_and_answers_help(name: str) -> None:
    path = ROOT / "bench" / name
    has_parser = "argparse" in path.read_text()
    run_name = "__main__" if has_parser else "bench_smoke"
    result = run([sys.executable, "-c", DRIVER, str(path), run_name], timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    if has_parser:
        assert "usage:" in result.stdout, result.stdout[-2000:]
    else:
        assert result.stdout.strip().endswith("imported"), result.stdout[-2000:]
