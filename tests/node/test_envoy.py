"""End to end: kubelet's CSI calls -> the node service -> two pods, each with
``wasm-agent proxy --node-socket`` and a real Envoy that loads the plugin through its view."""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e import xds_config as xc
from tests.e2e.test_envoy_proxy import Mesh
from tests.node.harness import Kubelet, NodeProcess
from tests.support.echo import EchoServer
from tests.support.istiod import FakeIstiod
from tests.support.oci_push import RawPusher
from tests.support.plugins_wat import header_plugin
from tests.support.registry import Registry, unique_repo
from wasm_agent.xds.types import ECDS_TYPE

pytestmark = [pytest.mark.envoy, pytest.mark.registry, pytest.mark.slow, pytest.mark.timeout(180)]

V1, V2 = header_plugin("v1"), header_plugin("v2")


@pytest.fixture
def workdir() -> Iterator[Path]:
    """Short paths: Envoy's and the agents' Unix sockets must fit in 107 bytes."""
    path = Path(tempfile.mkdtemp(prefix="wn-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def echo() -> Iterator[EchoServer]:
    with EchoServer() as server:
        yield server


@pytest.fixture
def istiod() -> Iterator[FakeIstiod]:
    with FakeIstiod() as server:
        yield server


def nacked(istiod: FakeIstiod, nonces: list[str]) -> list:
    """One NACK per nonce (one ECDS response per agent's stream)."""

    def found() -> list | None:
        nacks = [r for r in istiod.nacks(ECDS_TYPE) if r.response_nonce in nonces]
        return nacks if {r.response_nonce for r in nacks} == set(nonces) else None

    return istiod.wait_for(found, 30, f"NACKs of {nonces}")


def test_two_pods_load_the_plugin_through_their_views_one_download(
    workdir: Path,
    istiod: FakeIstiod,
    echo: EchoServer,
    oci_registry: Registry,
    oci_pusher: RawPusher,
) -> None:
    repo = unique_repo("node")
    first = oci_pusher.push_wasm_artifact(repo, "v1", V1)
    second = oci_pusher.push_wasm_artifact(repo, "v2", V2)
    node = NodeProcess(workdir / "node", env={"WASM_INSECURE_REGISTRIES": oci_registry.host})
    node.start()
    meshes: list[Mesh] = []
    try:
        with Kubelet(node) as kubelet:
            pods = [kubelet.pod("a"), kubelet.pod("b")]
            for pod in pods:
                kubelet.publish(pod)
            xc.serve(istiod, xc.wasm_extension(oci_registry.oci_url(repo, "v1"), first.hex), "n1")
            for i, pod in enumerate(pods):
                mesh = Mesh(workdir / f"pod{i}", istiod, echo, "--node-socket", str(pod.socket))
                meshes.append(mesh.start())
            for mesh, pod in zip(meshes, pods, strict=True):
                config = mesh.wait_ecds_version("n1")
                filename = f"{pod.target}/modules/"
                assert filename in json.dumps(config), config  # Envoy reads it in the view
                mesh.header_becomes("v1")
            assert oci_registry.count_blob_gets(repo) == 1  # one download for both pods

            # The node service is down: each agent NACKs with the reason; Envoy keeps v1.
            node.kill()
            url2 = oci_registry.oci_url(repo, "v2")
            nonces = xc.serve(istiod, xc.wasm_extension(url2, second.hex), "n2")
            assert len(nonces) == 2
            nacks = nacked(istiod, nonces)
            for nack in nacks:
                assert "node service unavailable" in nack.error_detail.message
            for mesh in meshes:
                mesh.header_becomes("v1")

            # Back: the views are intact and the next push loads v2 in both pods.
            node.start()
            xc.serve(istiod, xc.wasm_extension(url2, second.hex), "n3")
            for mesh in meshes:
                mesh.wait_ecds_version("n3")
                mesh.header_becomes("v2")
            assert oci_registry.count_blob_gets(repo) == 2  # v1 once, v2 once
            time.sleep(0.1)
            for pod in pods:
                kubelet.unpublish(pod)
    finally:
        for mesh in meshes:
            mesh.stop()
        node.cleanup()
