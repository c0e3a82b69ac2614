"""The load test in the reference host: one line per stage, Envoy's message on failure."""

from __future__ import annotations

import pytest

from tests.check.helpers import AS_INDEX, C_HEADERS, built, check_bytes, proxy_wat, wasm
from tests.support.plugins import plugin
from wasm_agent.check.load import failed_stage
from wasm_agent.check.model import Status

STAGES = ["instantiate", "start", "on_vm_start", "on_configure"]


def load_lines(report) -> list[tuple[str, Status, str]]:
    return [(c.name, c.status, c.message) for c in report.checks if c.section == "load"]


def test_c_plugin_loads_with_its_configuration_and_logs() -> None:
    report = check_bytes(built(C_HEADERS), b'{"k":1}')
    lines = load_lines(report)
    assert [n for n, _, _ in lines] == STAGES
    assert all(s is Status.PASS for _, s, _ in lines)
    assert lines[1][2] == "_initialize ran"
    assert lines[3][2] == "proxy_on_configure returned true with a 7-byte configuration"
    logs = report.checks[-1].details["plugin_logs"]
    assert {"level": "info", "message": "headers: configured with '{\"k\":1}'"} in logs


def test_assemblyscript_plugin_traps_on_an_empty_configuration() -> None:
    ok = load_lines(check_bytes(built(AS_INDEX), b"cfg", root_id="as_headers"))
    assert all(s is Status.PASS for _, s, _ in ok)
    assert ok[1][2] == "the start section ran at instantiation"
    bad = load_lines(check_bytes(built(AS_INDEX), b"", root_id="as_headers"))
    assert bad[3][1] is Status.FAIL
    assert bad[3][2].startswith("Function: proxy_on_configure failed: Uncaught RuntimeError")


@pytest.mark.parametrize(
    ("source", "stage", "message"),
    [
        ("wat/configure_false", "on_configure", "Failed to configure base Wasm plugin"),
        ("wat/vm_start_false", "on_vm_start", "Failed to start base Wasm"),
        (
            "wat/missing_import",
            "instantiate",
            "Failed to load Wasm module due to a missing import: env.proxy_get_log_level",
        ),
        ("wat/no_allocator", "instantiate", "Wasm module is missing malloc function."),
    ],
)
def test_wat_load_failures_stop_at_their_stage(source: str, stage: str, message: str) -> None:
    lines = load_lines(check_bytes(plugin(source).read_bytes()))
    failed_at = STAGES.index(stage)
    assert [s for _, s, _ in lines] == (
        [Status.PASS] * failed_at + [Status.FAIL] + [Status.SKIP] * (3 - failed_at)
    )
    assert lines[failed_at][2] == message


def test_trap_in_initialize_fails_the_start_stage() -> None:
    report = check_bytes(wasm(proxy_wat('(func (export "_initialize") unreachable)')))
    lines = load_lines(report)
    assert lines[1][1] is Status.FAIL
    assert lines[1][2] == "Function: _initialize failed: Uncaught RuntimeError: unreachable"
    assert not report.passed


def test_spec_cases_are_skipped_when_the_module_cannot_start(tmp_path) -> None:
    from wasm_agent.check.runner import Options
    from wasm_agent.check.spec import load_spec

    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text("- name: one\n  expect: {}\n")
    report = check_bytes(
        plugin("wat/missing_import").read_bytes(), options=Options(spec=load_spec(spec_file))
    )
    case = report.checks[-1]
    assert (case.id, case.status) == ("spec.one", Status.SKIP)


@pytest.mark.parametrize(
    ("message", "stage"),
    [
        ("Function: main failed: x", "start"),
        ("Function: proxy_on_context_create failed: x", "on_vm_start"),
        ("Function: proxy_on_configure failed: x", "on_configure"),
        ("Function: malloc failed: x", "instantiate"),
        ("Missing or unknown Proxy-Wasm ABI version", "instantiate"),
    ],
)
def test_failed_stage(message: str, stage: str) -> None:
    assert failed_stage(message) == stage
