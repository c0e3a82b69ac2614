"""The node service as a real process, and kubelet's side of the CSI API, for tests/node.

:class:`NodeProcess` runs ``wasm-agent node`` with a cache and a kubelet pods
directory in the test's tmp_path; :class:`Kubelet` calls the CSI Identity and Node services on
its real Unix socket the way kubelet does for a CSI ephemeral inline volume (volume handle
``csi-<sha256(pod uid + volume name)>``, target path under ``<pods>/<uid>/volumes/
kubernetes.io~csi/<name>/mount``, the ``csi.storage.k8s.io/*`` volume context).
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

import grpc

from wasm_agent.node import csi_pb2, csi_pb2_grpc
from wasm_agent.node.mounts import mount_points, unmount_all
from wasm_agent.node.unixsock import short_path

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class NodeProcess:
    """``wasm-agent node`` in ``workdir`` (cache ``workdir/cache``)."""

    def __init__(self, workdir: Path, *extra: str, env: dict[str, str] | None = None) -> None:
        self.workdir = workdir
        self.csi_socket = workdir / "csi.sock"
        self.cache_dir = workdir / "cache"
        self.pods_dir = workdir / "pods"
        self.log_path = workdir / "node.log"
        self.status_port = free_port()
        self.args = [
            sys.executable, "-m", "wasm_agent", "node",
            "--csi-endpoint", f"unix:{self.csi_socket}",
            "--cache-dir", str(self.cache_dir),
            "--kubelet-pods-dir", str(self.pods_dir),
            "--status-address", f"127.0.0.1:{self.status_port}",
            "--node-id", "test-node",
            *extra,
        ]  # fmt: skip
        self.env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> NodeProcess:
        """Start the node service and wait until it is ready. The status port comes from
        :func:`free_port`, so another process can take it first: then the service is started
        again on another port (at most twice)."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.pods_dir.mkdir(exist_ok=True)
        for attempt in range(3):
            self.csi_socket.unlink(missing_ok=True)
            offset = self.log_path.stat().st_size if self.log_path.exists() else 0
            with self.log_path.open("ab") as log:
                self.process = subprocess.Popen(
                    self.args, stdout=log, stderr=subprocess.STDOUT, env=self.env, cwd=self.workdir
                )
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    if attempt < 2 and self._status_port_taken(offset):
                        self._new_status_port()
                        break
                    raise RuntimeError(f"node exited {self.process.returncode}:\n{self.logs()}")
                if self.csi_socket.exists() and self.ready():
                    return self
                time.sleep(0.05)
            else:
                raise RuntimeError(f"node did not start in {timeout}s:\n{self.logs()}")
        raise AssertionError("unreachable")

    def _status_port_taken(self, offset: int) -> bool:
        with self.log_path.open("rb") as log:
            log.seek(offset)
            text = log.read().decode(errors="replace")
        return f"127.0.0.1:{self.status_port}: cannot listen: address already in use" in text

    def _new_status_port(self) -> None:
        old, self.status_port = f"127.0.0.1:{self.status_port}", free_port()
        self.args = [f"127.0.0.1:{self.status_port}" if a == old else a for a in self.args]

    def ready(self) -> bool:
        try:
            url = f"http://127.0.0.1:{self.status_port}/healthz/ready"
            with urllib.request.urlopen(url, timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    def metrics(self) -> str:
        url = f"http://127.0.0.1:{self.status_port}/metrics"
        with urllib.request.urlopen(url, timeout=15) as response:
            return response.read().decode()

    def kill(self) -> None:
        """SIGKILL: no cleanup at all, as a crash or an OOM kill."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def cleanup(self) -> None:
        """Stop, then detach every mount the test left under workdir."""
        self.stop()
        for _ in range(8):
            if not unmount_all(self.workdir):
                break

    def __enter__(self) -> NodeProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.cleanup()


@dataclass
class Pod:
    """One pod's volume as kubelet names it."""

    uid: str
    name: str
    namespace: str
    volume_id: str
    target: Path

    @property
    def socket(self) -> Path:
        return self.target / "node.sock"


class Kubelet:
    """Calls the CSI API on the node's real socket as kubelet does."""

    def __init__(self, node: NodeProcess) -> None:
        self.node = node
        self._path = short_path(node.csi_socket)
        name = self._path.__enter__()
        self.channel = grpc.insecure_channel(f"unix:{name}")
        self.identity = csi_pb2_grpc.IdentityStub(self.channel)
        self.csi = csi_pb2_grpc.NodeStub(self.channel)

    def close(self) -> None:
        self.channel.close()
        self._path.__exit__(None, None, None)

    def __enter__(self) -> Kubelet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def pod(self, name: str = "", namespace: str = "default", volume: str = "wasm") -> Pod:
        uid = str(uuid.uuid4())
        handle = "csi-" + hashlib.sha256((uid + volume).encode()).hexdigest()
        target = self.node.pods_dir / uid / "volumes" / "kubernetes.io~csi" / volume / "mount"
        return Pod(uid, name or f"pod-{uid[:8]}", namespace, handle, target)

    def publish_request(self, pod: Pod, **overrides: object) -> csi_pb2.NodePublishVolumeRequest:
        # kubelet creates the target's parent directory, not the target itself
        pod.target.parent.mkdir(parents=True, exist_ok=True)
        context = {
            "csi.storage.k8s.io/pod.name": pod.name,
            "csi.storage.k8s.io/pod.namespace": pod.namespace,
            "csi.storage.k8s.io/pod.uid": pod.uid,
            "csi.storage.k8s.io/serviceAccount.name": "default",
            "csi.storage.k8s.io/ephemeral": "true",
        }
        fields: dict[str, object] = {
            "volume_id": pod.volume_id,
            "target_path": str(pod.target),
            "volume_capability": csi_pb2.VolumeCapability(
                mount=csi_pb2.VolumeCapability.MountVolume(),
                access_mode=csi_pb2.VolumeCapability.AccessMode(
                    mode=csi_pb2.VolumeCapability.AccessMode.SINGLE_NODE_WRITER
                ),
            ),
            "readonly": True,
            "volume_context": context,
        }
        fields.update(overrides)
        return csi_pb2.NodePublishVolumeRequest(**fields)  # type: ignore[arg-type]

    def publish(self, pod: Pod, timeout: float = 30.0) -> None:
        self.csi.NodePublishVolume(self.publish_request(pod), timeout=timeout)

    def unpublish(self, pod: Pod, timeout: float = 30.0) -> None:
        self.csi.NodeUnpublishVolume(
            csi_pb2.NodeUnpublishVolumeRequest(
                volume_id=pod.volume_id, target_path=str(pod.target)
            ),
            timeout=timeout,
        )


def mounted(path: Path) -> bool:
    return path in mount_points(path)
