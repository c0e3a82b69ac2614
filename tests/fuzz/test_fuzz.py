"""CI part of the fuzzing: every target runs a few seconds over its seed corpus.

Each run is a child process (``tests/fuzz/run.py``): coverage-guided with atheris when it is
installed (the ``test`` extra installs it), else the built-in mutation engine. A run passes with
no finding (only documented errors escaped, no crash, no input over the per-input timeout, no
hang of the whole run), at least ``MIN_RUNS`` inputs executed and RSS growth after the warm-up
under the bound. The counts go to the test report (``record_property``) and to the terminal
summary (``tests/fuzz/conftest.py``). Longer campaigns: ``docs/fuzzing.md``.
"""

from __future__ import annotations

import pytest

from tests.fuzz.run import CORPUS, mutate, run_target
from tests.fuzz.targets import NAMES

SECONDS = 4.0
PER_INPUT_TIMEOUT = 5.0
RSS_GROWTH_MB = 64.0
# floors well under the rates measured on the 2-core dev machine (docs/fuzzing.md), so a busy
# CI machine still passes while a target that stopped running inputs does not
MIN_RUNS = {
    "wire": 2000,
    "ecds": 2000,
    "oci_manifest": 5000,
    "dockerconfig": 5000,
    "unbox": 1000,
    "host_memory": 300,
}


@pytest.mark.slow
@pytest.mark.parametrize("target", NAMES)
def test_fuzz_target_runs_clean(target: str, record_property) -> None:
    result = run_target(
        target,
        seconds=SECONDS,
        timeout=PER_INPUT_TIMEOUT,
        rss_growth_mb=RSS_GROWTH_MB,
        wall_slack=90.0,
    )
    for name in ("engine", "runs", "seconds", "allowed_errors", "rss_growth_mb", "peak_rss_mb"):
        record_property(name, getattr(result, name))
    record_property("fuzz_summary", result.summary())
    assert result.ok, result.summary() + (f"\ninput: {result.artifact}" if result.artifact else "")
    assert result.runs >= MIN_RUNS[target], result.summary()
    assert result.corpus_seeds >= 5, result.summary()


def test_every_target_has_a_committed_seed_corpus() -> None:
    assert sorted(p.name for p in CORPUS.iterdir() if p.is_dir()) == sorted(NAMES)
    for name in NAMES:
        assert len(list((CORPUS / name).iterdir())) >= 5, name


@pytest.mark.parametrize("engine", ["random", "auto"])
def test_runner_reports_a_crash_with_its_input(engine: str, tmp_path) -> None:
    result = run_target("wire", runs=50, engine=engine, keep=tmp_path, inject="crash")
    assert not result.ok and "injected crash" in result.finding, result.summary()
    assert result.artifact and (tmp_path / "artifacts").is_dir()


@pytest.mark.parametrize("engine", ["random", "auto"])
def test_runner_reports_an_input_over_the_timeout(engine: str, tmp_path) -> None:
    result = run_target("wire", seconds=10, timeout=1, engine=engine, keep=tmp_path, inject="hang")
    assert not result.ok, result.summary()
    assert "timeout" in result.finding.lower() or "longer than" in result.finding, result.summary()
    assert result.artifact, result.summary()


def test_mutate_is_bounded_and_deterministic() -> None:
    import random

    seeds = [b"abcdefgh" * 4, b"\x00\x01"]
    first = [mutate(seeds[0], random.Random(7), seeds, 40) for _ in range(3)]
    again = [mutate(seeds[0], random.Random(7), seeds, 40) for _ in range(3)]
    assert first == again
    rng = random.Random(3)
    assert all(len(mutate(seeds[0], rng, seeds, 40)) <= 40 for _ in range(500))
