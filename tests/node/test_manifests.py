"""deploy/kubernetes/node: validated offline against the Kubernetes JSON schemas shipped by
``kubernetes-validate`` (strict), Pod Security "restricted" checked for the workload, and the
wiring between kubelet, the registrar, the node service, the agent and Envoy."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from wasm_agent.node import DRIVER_NAME, SOCKET_NAME
from wasm_agent.node.command import add_arguments, settings_from_args

ROOT = Path(__file__).resolve().parents[2]
NODE = ROOT / "deploy" / "kubernetes" / "node"
K8S_VERSIONS = ("1.29", "1.37")
# Pod Security Standards, "restricted" profile (kubernetes.io/docs/concepts/security/
# pod-security-standards): allowed volume types and capabilities.
RESTRICTED_VOLUMES = {
    "configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
    "projected", "secret",
}  # fmt: skip


def docs() -> list[dict[str, Any]]:
    out = []
    for path in sorted(NODE.glob("*.yaml")):
        if path.name != "kustomization.yaml":
            out += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return out


def one(kind: str, name: str | None = None) -> dict[str, Any]:
    [doc] = [d for d in docs() if d["kind"] == kind and name in (None, d["metadata"]["name"])]
    return doc


def pod_spec(doc: dict[str, Any]) -> dict[str, Any]:
    return doc["spec"]["template"]["spec"]


def containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [*spec.get("initContainers", []), *spec["containers"]]


def container(spec: dict[str, Any], name: str) -> dict[str, Any]:
    [found] = [c for c in containers(spec) if c["name"] == name]
    return found


def flag(args: list[str], name: str) -> str:
    [value] = [a.split("=", 1)[1] for a in args if a.startswith(name + "=")]
    return value


def mount_path(c: dict[str, Any], volume: str) -> dict[str, Any]:
    [mount] = [m for m in c["volumeMounts"] if m["name"] == volume]
    return mount


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_document_is_valid_kubernetes(version: str) -> None:
    found = docs()
    assert {d["kind"] for d in found} >= {"Namespace", "CSIDriver", "DaemonSet", "Deployment"}
    for doc in found:
        kubernetes_validate.validate(doc, version, strict=True)


def test_kustomization_lists_every_file() -> None:
    k = yaml.safe_load((NODE / "kustomization.yaml").read_text())
    files = sorted(p.name for p in NODE.glob("*.yaml") if p.name != "kustomization.yaml")
    assert sorted(k["resources"]) == files


def test_csidriver_is_ephemeral_only_with_pod_info() -> None:
    driver = one("CSIDriver")
    assert driver["metadata"]["name"] == DRIVER_NAME
    spec = driver["spec"]
    assert spec["podInfoOnMount"] is True
    assert spec["volumeLifecycleModes"] == ["Ephemeral"]
    assert spec["attachRequired"] is False
    assert spec["fsGroupPolicy"] == "None"  # kubelet never chowns the read-only view


def test_daemonset_registers_the_csi_socket_and_propagates_mounts() -> None:
    daemonset = one("DaemonSet")
    spec = pod_spec(daemonset)
    node = container(spec, "node")
    registrar = container(spec, "node-driver-registrar")
    assert "csi-node-driver-registrar" in registrar["image"]
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(node["args"][1:])
    assert node["args"][0] == "node"
    settings = settings_from_args(args)
    # The registrar and the node service name the same socket; kubelet reaches it on the host.
    socket = settings.csi_socket
    plugin_mount = mount_path(node, "plugin-dir")
    assert socket.parent == Path(plugin_mount["mountPath"])
    assert flag(registrar["args"], "--csi-address") == str(socket)
    volumes = {v["name"]: v for v in spec["volumes"]}
    host_dir = volumes["plugin-dir"]["hostPath"]["path"]
    assert host_dir == f"/var/lib/kubelet/plugins/{DRIVER_NAME}"
    registration = flag(registrar["args"], "--kubelet-registration-path")
    assert registration == f"{host_dir}/{socket.name}"
    assert volumes["registration-dir"]["hostPath"]["path"] == "/var/lib/kubelet/plugins_registry"
    # The views are mounted under kubelet's pod directories and must reach the host.
    pods = mount_path(node, "pods-dir")
    assert pods["mountPropagation"] == "Bidirectional"
    assert pods["mountPath"] == str(settings.pods_dir)
    assert volumes["pods-dir"]["hostPath"]["path"] == "/var/lib/kubelet/pods"
    assert mount_path(node, "node-cache")["mountPath"] == str(settings.cache.directory)
    # Only the node service writes the node cache: no other container mounts it.
    assert [c["name"] for c in containers(spec) if any(
        m["name"] == "node-cache" for m in c.get("volumeMounts", []))] == ["node"]  # fmt: skip
    assert daemonset["metadata"]["namespace"] == "wasm-agent-system"


def restricted_violations(spec: dict[str, Any]) -> list[str]:
    """The Pod Security "restricted" checks (and "baseline", which it includes) a pod fails."""
    problems = []
    for name in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(name):
            problems.append(name)
    for volume in spec.get("volumes", []):
        kind = next(k for k in volume if k != "name")
        if kind not in RESTRICTED_VOLUMES:
            problems.append(f"volume {volume['name']}: {kind}")
    pod = spec.get("securityContext", {})
    if pod.get("seccompProfile", {}).get("type") not in ("RuntimeDefault", "Localhost"):
        problems.append("pod seccompProfile")
    for c in containers(spec):
        sc = c.get("securityContext", {})
        where = c["name"]
        if sc.get("privileged"):
            problems.append(f"{where}: privileged")
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{where}: allowPrivilegeEscalation")
        if not sc.get("runAsNonRoot", pod.get("runAsNonRoot")):
            problems.append(f"{where}: runAsNonRoot")
        if sc.get("runAsUser", pod.get("runAsUser")) == 0:
            problems.append(f"{where}: runAsUser 0")
        caps = sc.get("capabilities", {})
        if "ALL" not in caps.get("drop", []):
            problems.append(f"{where}: capabilities not dropped")
        if set(caps.get("add", [])) - {"NET_BIND_SERVICE"}:
            problems.append(f"{where}: capabilities added")
        if c.get("ports") and any(p.get("hostPort") for p in c["ports"]):
            problems.append(f"{where}: hostPort")
    return problems


def test_workload_namespace_enforces_restricted_and_the_pod_meets_it() -> None:
    workload = one("Deployment", "envoy-wasm-node")
    namespace = one("Namespace", workload["metadata"]["namespace"])
    labels = namespace["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    assert restricted_violations(pod_spec(workload)) == []
    # and the checker does catch the node plugin, which is why it lives elsewhere
    daemonset = one("DaemonSet")
    assert restricted_violations(pod_spec(daemonset))
    assert one("Namespace", daemonset["metadata"]["namespace"]) is not namespace


def test_the_only_extra_volume_is_the_csi_ephemeral_volume() -> None:
    sidecar_path = ROOT / "deploy" / "kubernetes" / "sidecar" / "deployment.yaml"
    [sidecar] = [d for d in yaml.safe_load_all(sidecar_path.read_text()) if d]
    spec = pod_spec(one("Deployment", "envoy-wasm-node"))
    ours = {v["name"]: v for v in spec["volumes"]}
    theirs = {v["name"] for v in pod_spec(sidecar)["volumes"]} - {"wasm-cache"}
    assert set(ours) - theirs == {"wasm-modules"}
    assert ours["wasm-modules"] == {
        "name": "wasm-modules", "csi": {"driver": DRIVER_NAME, "readOnly": True}
    }  # fmt: skip
    agent, envoy = container(spec, "wasm-agent"), container(spec, "envoy")
    assert agent in spec["initContainers"] and agent["restartPolicy"] == "Always"
    node_socket = Path(flag(agent["args"], "--node-socket"))
    assert node_socket.name == SOCKET_NAME
    for c in (agent, envoy):  # the same volume at the same path, read-only
        mount = mount_path(c, "wasm-modules")
        assert mount["readOnly"] is True
        assert Path(mount["mountPath"]) == node_socket.parent
    assert not any(a.startswith("--cache-dir") for a in agent["args"])


def test_bootstrap_configmap_is_a_copy_of_deploy_envoy() -> None:
    configmap = one("ConfigMap", "wasm-agent-envoy-bootstrap")
    source = (ROOT / "deploy" / "envoy" / "bootstrap-sotw.yaml").read_text()
    assert configmap["data"]["bootstrap-sotw.yaml"] == source
    envoy = container(pod_spec(one("Deployment", "envoy-wasm-node")), "envoy")
    assert shlex.join(envoy["args"][:2]) == "-c /etc/envoy/bootstrap.yaml"


def test_the_workload_agent_arguments_parse_with_the_real_proxy_command() -> None:
    from wasm_agent.agent.commands import proxy

    agent = container(pod_spec(one("Deployment", "envoy-wasm-node")), "wasm-agent")
    assert agent["args"][0] == "proxy"
    parser = argparse.ArgumentParser()
    proxy.add_arguments(parser)
    args = parser.parse_args(agent["args"][1:])
    assert args.node_socket == "/var/run/wasm-agent/node.sock"
    assert args.listen == "unix:/etc/istio/proxy/XDS"
