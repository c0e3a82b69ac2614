"""The error root and core's independence from the rest of the package."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from wasm_agent.cache import ModuleGone
from wasm_agent.cache.errors import CacheWriteError
from wasm_agent.cache.locks import LockTimeout
from wasm_agent.check.runner import InputError
from wasm_agent.check.spec import SpecError
from wasm_agent.check.structure import MalformedModule
from wasm_agent.core.errors import SettingsError, UsageError, WasmAgentError
from wasm_agent.core.settings import build_fetch_settings, verify_policy_path
from wasm_agent.demo.envoy import EnvoyError
from wasm_agent.fetch.dockerconfig import DockerConfigError
from wasm_agent.fetch.errors import ChecksumMismatch, FetchError
from wasm_agent.fetch.reference import InvalidReference
from wasm_agent.fetch.trust_policy import PolicyError
from wasm_agent.host import LoadError
from wasm_agent.xds.convert import MalformedResource
from wasm_agent.xds.upstream import UpstreamError
from wasm_agent.xds.wire import WireError

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("error", "old_base"),
    [
        (SettingsError, ValueError),
        (FetchError, Exception),
        (ChecksumMismatch, FetchError),
        (CacheWriteError, FetchError),
        (PolicyError, ValueError),
        (InvalidReference, ValueError),
        (DockerConfigError, ValueError),
        (ModuleGone, LookupError),
        (LockTimeout, Exception),
        (WireError, ValueError),
        (MalformedResource, ValueError),
        (UpstreamError, RuntimeError),
        (LoadError, Exception),
        (MalformedModule, ValueError),
        (SpecError, ValueError),
        (InputError, Exception),
        (EnvoyError, RuntimeError),
        (UsageError, Exception),
    ],
)
def test_library_errors_share_the_root_and_keep_their_old_base(
    error: type[Exception], old_base: type[Exception]
) -> None:
    assert issubclass(error, WasmAgentError)
    assert issubclass(error, old_base)


def test_core_loads_no_other_part_of_the_package() -> None:
    code = (
        "import json, sys, wasm_agent.core.errors, wasm_agent.core.logs, wasm_agent.core.metrics, "
        "wasm_agent.core.settings; "
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('wasm_agent.'))))"
    )
    run = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    loaded = json.loads(run.stdout)
    assert loaded == [
        "wasm_agent.core",
        "wasm_agent.core.config",
        "wasm_agent.core.errors",
        "wasm_agent.core.logs",
        "wasm_agent.core.metrics",
        "wasm_agent.core.settings",
    ]


def test_the_flag_wins_over_the_environment_for_the_policy_path() -> None:
    env = {"WASM_AGENT_VERIFY_POLICY": " /etc/policy.yaml "}
    assert verify_policy_path(env) == "/etc/policy.yaml"
    assert verify_policy_path(env, "flag.yaml") == "flag.yaml"
    assert verify_policy_path({}) == ""


def test_core_builds_fetch_settings_without_a_policy() -> None:
    settings = build_fetch_settings({"WASM_INSECURE_REGISTRIES": "a, b"})
    assert settings.insecure_registries == frozenset({"a", "b"})
    assert settings.verify_policy is None
    with pytest.raises(SettingsError, match="ISTIO_WASM_MAX_BINARY_SIZE_BYTES"):
        build_fetch_settings({"ISTIO_WASM_MAX_BINARY_SIZE_BYTES": "0"})
