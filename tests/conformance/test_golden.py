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
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor

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


# Recording: most of a case's time is Envoy starting and the case's own waits (client
# timeouts, back-offs), so cases are recorded RECORDERS at a time, each in its own Envoy.
RECORDERS = 3


@pytest.fixture(scope="module")
def recordings(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Future]]:
    """The recordings of the cases this session runs, started at once in a small pool (each
    test waits for its own)."""
    names = sorted(
        item.callspec.params["name"]
        for item in request.session.items
        if item.originalname == "test_envoy_matches_golden"
    )
    root = tmp_path_factory.mktemp("golden")
    with ThreadPoolExecutor(max_workers=RECORDERS) as pool:
        futures = {
            name: pool.submit(golden.record, golden.CASES[name], root / name) for name in names
        }
        yield futures
        for future in futures.values():
            future.cancel()


@pytest.mark.envoy
@pytest.mark.parametrize("name", sorted(golden.CASES))
def test_envoy_matches_golden(name: str, recordings: dict[str, Future]) -> None:
    case = golden.CASES[name]
    observed = recordings[name].result(timeout=300)
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
