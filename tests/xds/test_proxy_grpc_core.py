"""The proxy's grpc C-core settings (``GRPC_EXPERIMENTS``), checked in fresh interpreters."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from wasm_agent.xds import grpc_core

ROOT = Path(__file__).resolve().parents[2]
SHOW = "import os; print(repr(os.environ.get('GRPC_EXPERIMENTS')))"
CONFIGURE = "from wasm_agent.xds import grpc_core; grpc_core.configure()"


def fresh(code: str, **env: str) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k != "GRPC_EXPERIMENTS"}
    return subprocess.run(
        [sys.executable, "-c", code],
        env={**base, "PYTHONPATH": str(ROOT), **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )


def test_the_proxy_sets_low_latency_experiments_before_grpc_loads() -> None:
    if grpc_core.grpcio_version() not in grpc_core.MEASURED_GRPCIO:
        pytest.fail(f"grpcio {grpc_core.grpcio_version()}: re-run bench/transports.py")
    # the proxy command's order: configure() first, then the proxy modules and grpc
    run = fresh(f"{CONFIGURE}; import wasm_agent.xds.upstream, grpc.aio; {SHOW}")
    assert run.stdout.strip() == repr(grpc_core.LOW_LATENCY_EXPERIMENTS)
    assert "Unknown experiment" not in run.stderr  # grpc knows both names


def test_an_operator_setting_wins_even_empty() -> None:
    run = fresh(f"{CONFIGURE}; {SHOW}", GRPC_EXPERIMENTS="")
    assert run.stdout.strip() == "''"
    run = fresh(f"{CONFIGURE}; {SHOW}", GRPC_EXPERIMENTS="-event_engine_dns")
    assert run.stdout.strip() == "'-event_engine_dns'"


def test_too_late_once_grpc_is_loaded() -> None:
    run = fresh(f"import grpc; {CONFIGURE}; {SHOW}")
    assert run.stdout.strip() == "None"


def test_importing_the_proxy_modules_changes_no_environment() -> None:
    run = fresh(f"import wasm_agent.xds.grpc_core, wasm_agent.xds.upstream; {SHOW}")
    assert run.stdout.strip() == "None"


def test_the_proxy_command_configures_grpc_first() -> None:
    # a usage error found in run() (after configure()): exit 2, and the experiments were set
    code = (
        "import os; from wasm_agent.agent import cli; "
        "rc = cli.main(['proxy', '--tls-ca', 'ca.pem', '--tls-cert', 'cert.pem']); "
        "print(rc, os.environ.get('GRPC_EXPERIMENTS'))"
    )
    run = fresh(code)
    assert run.stdout.split() == ["2", grpc_core.LOW_LATENCY_EXPERIMENTS], run.stdout
    assert "--tls-cert and --tls-key go together" in run.stderr
