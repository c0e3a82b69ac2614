"""The reference host against golden recordings of real Envoy 1.40 (``golden.py``).

``test_host_matches_golden`` (always): the host runs each case and must observe exactly what
the committed ``golden/<case>.json`` says Envoy did. ``test_envoy_matches_golden`` runs only
with ``WASM_AGENT_RECORD_GOLDEN=1`` or ``--record-golden`` (deselected otherwise): it records
each case from Envoy again and rewrites the golden file, or, in CI mode (``CI`` set), fails when
Envoy's recording drifted from the committed one. The suite prints "golden: N cases identical /
M" at the end (tests/conformance/conftest.py).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.conformance import golden


def _diff(expected: dict, actual: dict) -> str:
    lines = []
    for key in expected:
        if expected[key] != actual.get(key):
            lines.append(
                f"{key}:\n  envoy: {json.dumps(expected[key], indent=1)}\n"
                f"  host:  {json.dumps(actual.get(key), indent=1)}"
            )
    return "\n".join(lines)


@pytest.mark.parametrize("name", sorted(golden.CASES))
def test_host_matches_golden(name: str) -> None:
    path = golden.golden_path(name)
    assert path.exists(), f"no golden file {path}: record with WASM_AGENT_RECORD_GOLDEN=1"
    expected = golden.comparable(golden.load_golden(name)["expected"])
    actual = golden.comparable(golden.observe_host(golden.CASES[name]).to_json())
    assert actual == expected, f"host differs from Envoy on {name}:\n{_diff(expected, actual)}"


@pytest.mark.envoy
@pytest.mark.parametrize("name", sorted(golden.CASES))
def test_envoy_matches_golden(name: str, tmp_path: Path) -> None:
    case = golden.CASES[name]
    observed = golden.record(case, tmp_path)
    document = golden.golden_document(case, observed, golden.envoy_version())
    path = golden.golden_path(name)
    if os.environ.get("CI"):
        assert path.exists(), f"no golden file for {name}"
        committed = json.loads(path.read_text())
        for doc in (document, committed):
            doc["expected"] = golden.comparable(doc["expected"])
        assert document == committed, (
            f"Envoy drifted from the golden file {path.name}:\n"
            f"{_diff(committed['expected'], document['expected'])}"
        )
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=1) + "\n")
