"""``wasm-agent prefetch --node-socket`` (and ``WASM_AGENT_NODE_SOCKET``) as real processes
against a real node service: modules land in the pod's view, failures are clear."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.node.harness import ROOT, Kubelet, NodeProcess, Pod
from tests.support.modserver import ModServer
from tests.support.wasm import minimal_module, sha256_hex


@pytest.fixture
def modserver() -> Iterator[ModServer]:
    with ModServer() as server:
        yield server


@pytest.fixture
def view(tmp_path: Path) -> Iterator[tuple[NodeProcess, Pod]]:
    with NodeProcess(tmp_path / "node") as node, Kubelet(node) as kubelet:
        pod = kubelet.pod("cli")
        kubelet.publish(pod)
        yield node, pod


def prefetch(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "wasm_agent", "prefetch", *args],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
    )  # fmt: skip


def test_prefetch_through_the_node_socket(
    view: tuple[NodeProcess, Pod], modserver: ModServer, tmp_path: Path
) -> None:
    _node, pod = view
    module = minimal_module()
    url = modserver.serve("/cli.wasm", module)
    result = prefetch(url, "--sha256", sha256_hex(module), "--json", "--node-socket",
                      str(pod.socket), "--cache-dir", str(tmp_path / "unused"))  # fmt: skip
    assert result.returncode == 0, result.stderr
    [entry] = json.loads(result.stdout)
    assert entry["path"] == str(pod.target / "modules" / f"{sha256_hex(module)}.wasm")
    assert Path(entry["path"]).read_bytes() == module
    assert not (tmp_path / "unused").exists()  # the pod keeps no cache of its own
    again = prefetch(url, "--json", env={"WASM_AGENT_NODE_SOCKET": str(pod.socket)})
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)[0]["cached"] is True
    assert modserver.count("/cli.wasm") == 1


def test_prefetch_with_the_node_service_down_fails_clearly(
    view: tuple[NodeProcess, Pod], modserver: ModServer
) -> None:
    node, pod = view
    url = modserver.serve("/down.wasm", minimal_module())
    node.kill()
    result = prefetch(url, "--node-socket", str(pod.socket))
    assert result.returncode == 1
    assert "node service unavailable" in result.stderr
    node.start()
    result = prefetch(url, "--node-socket", str(pod.socket))
    assert result.returncode == 0, result.stderr
