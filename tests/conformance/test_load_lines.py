"""``LoadError.lines``: the whole sequence of error lines Envoy 1.40 logs when a plugin cannot
load (each case starts a real Envoy that refuses the config), not only the root cause."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.support.envoy_wasm import WasmFilter, start_failure
from tests.support.plugins import plugin
from wasm_agent.host.harness import FailurePolicy, LoadError, start_plugin

_LINE = re.compile(
    r"^\[[^\]]*\]\[\d+\]\[(?P<level>\w+)\]\[(?P<comp>\w+)\] \[[^\]]*\] (?P<text>.*)$"
)
_UNABLE = re.compile(r"error `(Unable to create Wasm plugin [^`]*)`")


def envoy_error_lines(log: str) -> list[tuple[str, str]]:
    """Error/critical lines of the wasm component, and main's ``Unable to create ...``."""
    out = []
    for raw in log.splitlines():
        match = _LINE.match(raw)
        if match is None or match["level"] not in ("error", "critical"):
            continue
        if match["comp"] == "wasm":
            out.append((match["level"], match["text"]))
        elif match["comp"] == "main" and (unable := _UNABLE.search(match["text"])):
            out.append((match["level"], unable.group(1)))
    return out


CASES = {
    "missing_import": ("wat/missing_import", None),
    "vm_start_false": ("wat/vm_start_false", "FAIL_OPEN"),
    "configure_false": ("wat/configure_false", None),
    "start_trap": ("wat/start_trap", "FAIL_RELOAD"),
    "vm_start_trap": ("wat/vm_start_trap", None),
    "no_abi_version": ("wat/no_abi_version", None),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_load_error_lines_match_envoy(name: str, tmp_path: Path) -> None:
    module, policy = CASES[name]
    spec = WasmFilter("lf", plugin(module), "x", configuration="x", failure_policy=policy)
    expected = envoy_error_lines(start_failure(spec, tmp_path))
    with pytest.raises(LoadError) as caught:
        start_plugin(
            plugin(module), plugin_config="x", root_id="x", vm_id="lf", plugin_name="lf",
            failure_policy=FailurePolicy[policy or "FAIL_CLOSED"],
        )  # fmt: skip
    assert caught.value.lines == expected
    assert str(caught.value) in "\n".join(text for _, text in expected)
