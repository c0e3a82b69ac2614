"""The CSI API of the node service on its real Unix socket, called as kubelet calls it."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from tests.node.harness import Kubelet, NodeProcess, mounted
from wasm_agent.node import csi_pb2


@pytest.fixture
def node(tmp_path: Path) -> Iterator[NodeProcess]:
    with NodeProcess(tmp_path / "node") as proc:
        yield proc


@pytest.fixture
def kubelet(node: NodeProcess) -> Iterator[Kubelet]:
    with Kubelet(node) as client:
        yield client


def test_identity_and_node_info(kubelet: Kubelet, node: NodeProcess) -> None:
    info = kubelet.identity.GetPluginInfo(csi_pb2.GetPluginInfoRequest(), timeout=30)
    assert info.name == "csi.wasm-agent.io"
    assert info.vendor_version
    caps = kubelet.identity.GetPluginCapabilities(csi_pb2.GetPluginCapabilitiesRequest())
    assert list(caps.capabilities) == []  # node-only plugin: no controller service
    probe = kubelet.identity.Probe(csi_pb2.ProbeRequest(), timeout=30)
    assert probe.ready.value is True
    node_caps = kubelet.csi.NodeGetCapabilities(csi_pb2.NodeGetCapabilitiesRequest())
    assert list(node_caps.capabilities) == []  # no staging: kubelet calls publish directly
    assert kubelet.csi.NodeGetInfo(csi_pb2.NodeGetInfoRequest()).node_id == "test-node"
    assert os.stat(node.csi_socket).st_mode & 0o777 == 0o600


def test_publish_creates_a_read_only_view_and_is_idempotent(
    kubelet: Kubelet, node: NodeProcess
) -> None:
    pod = kubelet.pod("web")
    kubelet.publish(pod)
    assert mounted(pod.target)
    assert sorted(p.name for p in pod.target.iterdir()) == ["modules", "node.sock"]
    assert pod.target.stat().st_mode & 0o777 == 0o555
    assert (pod.target / "modules").stat().st_mode & 0o777 == 0o555
    with pytest.raises(OSError) as raised:
        (pod.target / "modules" / "x.wasm").write_bytes(b"x")
    assert raised.value.strerror == "Read-only file system"
    kubelet.publish(pod)  # the same call again: OK, nothing changes
    assert mount_count(pod.target) == 1
    other = kubelet.pod("web")
    other.volume_id = pod.volume_id
    with pytest.raises(grpc.RpcError) as error:
        kubelet.publish(other)
    assert error.value.code() == grpc.StatusCode.ALREADY_EXISTS
    kubelet.unpublish(pod)
    assert not mounted(pod.target)
    assert not pod.target.exists()
    kubelet.unpublish(pod)  # again: OK
    assert "wasm_node_volumes 0" in node.metrics()


def mount_count(path: Path) -> int:
    from wasm_agent.node.mounts import mount_points

    return sum(1 for p in mount_points(path) if p == path)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"volume_id": ""}, "volume_id is required"),
        ({"target_path": ""}, "target_path is required"),
        ({"target_path": "/etc/wasm"}, "must lie under"),
        ({"volume_capability": None}, "volume_capability is required"),
        ({"volume_context": {"csi.storage.k8s.io/pod.uid": "u"}}, "only CSI ephemeral inline"),
        ({"volume_context": {"csi.storage.k8s.io/ephemeral": "true"}}, "pod.uid"),
    ],
)
def test_publish_refuses_bad_requests(kubelet: Kubelet, change: dict, message: str) -> None:
    pod = kubelet.pod()
    request = kubelet.publish_request(pod, **{k: v for k, v in change.items() if v is not None})
    if "volume_capability" in change:
        request.ClearField("volume_capability")
    with pytest.raises(grpc.RpcError) as error:
        kubelet.csi.NodePublishVolume(request, timeout=30)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in error.value.details()


def test_block_volumes_and_traversal_refused(kubelet: Kubelet, node: NodeProcess) -> None:
    pod = kubelet.pod()
    block = csi_pb2.VolumeCapability(block=csi_pb2.VolumeCapability.BlockVolume())
    with pytest.raises(grpc.RpcError) as error:
        kubelet.csi.NodePublishVolume(
            kubelet.publish_request(pod, volume_capability=block), timeout=30
        )
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    escape = str(node.pods_dir / ".." / "escape")
    with pytest.raises(grpc.RpcError) as error:
        kubelet.csi.NodePublishVolume(kubelet.publish_request(pod, target_path=escape), timeout=30)
    assert "must lie under" in error.value.details()
    assert not (node.workdir / "escape").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "--csi-endpoint is required"),
        (["--csi-endpoint", "tcp://1.2.3.4:5"], "expected unix:PATH"),
        (["--csi-endpoint", "unix:relative.sock"], "must be absolute"),
        (["--csi-endpoint", "unix:/tmp/x.sock", "--access-ttl", "soon"], "--access-ttl"),
    ],
)
def test_usage_errors_exit_2(args: list[str], message: str) -> None:
    import subprocess
    import sys

    from tests.node.harness import ROOT

    result = subprocess.run(
        [sys.executable, "-m", "wasm_agent", "node", *args],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), "CSI_ENDPOINT": ""},
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert message in result.stderr


def test_unpublish_of_an_unknown_volume_never_deletes_foreign_files(kubelet: Kubelet) -> None:
    pod = kubelet.pod("stranger")
    pod.target.mkdir(parents=True)
    (pod.target / "data").write_text("not ours")
    kubelet.unpublish(pod)  # OK, as the spec asks for a volume it does not know
    assert (pod.target / "data").read_text() == "not ours"
    (pod.target / "data").unlink()
    kubelet.unpublish(pod)
    assert not pod.target.exists()  # an empty directory is removed


def test_the_target_must_be_in_the_pods_own_directory(kubelet: Kubelet) -> None:
    pod, other = kubelet.pod("a"), kubelet.pod("b")
    request = kubelet.publish_request(pod)
    request.volume_context["csi.storage.k8s.io/pod.uid"] = other.uid
    with pytest.raises(grpc.RpcError) as error:
        kubelet.csi.NodePublishVolume(request, timeout=30)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "directory of the pod" in error.value.details()


def test_a_view_of_a_pod_removed_while_the_node_was_down_is_dropped(
    kubelet: Kubelet, node: NodeProcess
) -> None:
    import shutil

    gone, kept = kubelet.pod("gone"), kubelet.pod("kept")
    kubelet.publish(gone)
    kubelet.publish(kept)
    node.kill()
    from wasm_agent.node.mounts import unmount_all

    unmount_all(gone.target)  # kubelet cleans up the pod's directory without us
    shutil.rmtree(node.pods_dir / gone.uid)
    node.start()
    assert "wasm_node_volumes 1" in node.metrics()
    assert mounted(kept.target) and (kept.target / "node.sock").exists()
    assert not (node.pods_dir / gone.uid).exists()  # nothing recreated for the dead pod
    assert len(list((node.cache_dir / "node" / "volumes").glob("*.json"))) == 1


def test_a_failed_publish_leaves_nothing_a_restart_would_restore(
    kubelet: Kubelet, node: NodeProcess
) -> None:
    pod = kubelet.pod("broken")
    pod.target.parent.mkdir(parents=True)
    pod.target.write_text("a file where the view should go")
    with pytest.raises(grpc.RpcError) as error:
        kubelet.publish(pod)
    assert error.value.code() == grpc.StatusCode.INTERNAL
    assert "cannot create the view" in error.value.details()
    assert pod.target.read_text() == "a file where the view should go"
    assert list((node.cache_dir / "node" / "volumes").glob("*.json")) == []
    assert not (node.cache_dir / "node" / "views").exists() or not any(
        (node.cache_dir / "node" / "views").iterdir()
    )
    pod.target.unlink()
    kubelet.publish(pod)  # kubelet retries: now it works
    assert mounted(pod.target)
