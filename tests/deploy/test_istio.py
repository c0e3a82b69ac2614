"""deploy/kubernetes/istio: wasm-agent beside pilot-agent in a real Istio mesh.

No Istio runs here. What is checked: Istio's injection is reproduced the way istiod does it (the
`sidecar` template's istio-proxy container and istio-envoy volume, then our `wasm-agent` template
merged by name), the result validates strictly against the Kubernetes schemas, and the wiring holds:
Envoy's unchanged bootstrap dials wasm-agent, wasm-agent dials pilot-agent's relocated socket, the
cache is shared read-only, UIDs and ports do not collide, and the arguments parse with the real CLI.
"""

from __future__ import annotations

import copy
import posixpath
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
ISTIO = ROOT / "deploy" / "kubernetes" / "istio"
K8S_VERSIONS = ("1.29", "1.37")
# Istio's envoy_bootstrap.json: the xds-grpc cluster's pipe, relative to Envoy's working dir "/".
ISTIO_BOOTSTRAP_XDS_PIPE = "./etc/istio/proxy/XDS"
ISTIO_PROXY_UID = 1337
# Ports Istio's sidecar uses (admin, outbound, inbound, tunnel, status, health, DNS, Prometheus).
ISTIO_PORTS = {15000, 15001, 15004, 15006, 15008, 15009, 15020, 15021, 15053, 15090}
CONVERSION_OFF = "ISTIO_AGENT_ENABLE_WASM_REMOTE_LOAD_CONVERSION"


def template() -> dict[str, Any]:
    values = yaml.safe_load((ISTIO / "injector-values.yaml").read_text())
    text = values["sidecarInjectorWebhook"]["templates"]["wasm-agent"]
    assert "{{" not in text, "the template is plain YAML: nothing for istiod to render"
    return yaml.safe_load(text)


def workload() -> dict[str, Any]:
    [doc] = [d for d in yaml.safe_load_all((ISTIO / "workload.yaml").read_text()) if d]
    return doc


def _merge_named(base: list[dict[str, Any]], patch: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Strategic merge of a list keyed by ``name`` (containers, volumes, volumeMounts by path)."""
    out = [copy.deepcopy(item) for item in base]
    for item in patch:
        key = "name" if "name" in item else "mountPath"
        match = next((o for o in out if o.get(key) == item[key]), None)
        if match is None:
            out.append(copy.deepcopy(item))
            continue
        for field, value in item.items():
            if isinstance(value, list) and value and isinstance(value[0], dict):
                match[field] = _merge_named(match.get(field, []), value)
            else:
                match[field] = copy.deepcopy(value)
    return out


def injected_pod() -> dict[str, Any]:
    """The workload's pod after Istio's `sidecar` template, then ours, as istiod merges them."""
    doc = workload()
    meta = doc["spec"]["template"]["metadata"]
    spec = copy.deepcopy(doc["spec"]["template"]["spec"])
    # The parts of Istio's sidecar template the wiring depends on.
    spec["containers"].append(
        {
            "name": "istio-proxy",
            "image": "docker.io/istio/proxyv2:1.28.0",
            "args": ["proxy", "sidecar", "--domain", "default.svc.cluster.local"],
            "securityContext": {
                "runAsUser": ISTIO_PROXY_UID,
                "runAsGroup": ISTIO_PROXY_UID,
                "runAsNonRoot": True,
                "allowPrivilegeEscalation": False,
                "readOnlyRootFilesystem": True,
                "capabilities": {"drop": ["ALL"]},
            },
            "volumeMounts": [{"name": "istio-envoy", "mountPath": "/etc/istio/proxy"}],
        }
    )
    spec["volumes"] = [{"name": "istio-envoy", "emptyDir": {"medium": "Memory"}}]
    patch = template()["spec"]
    spec["containers"] = _merge_named(spec["containers"], patch["containers"])
    spec["volumes"] = _merge_named(spec["volumes"], patch["volumes"])
    return {"apiVersion": "v1", "kind": "Pod", "metadata": copy.deepcopy(meta) | {"name": "p"},
            "spec": spec}  # fmt: skip


def container(pod: dict[str, Any], name: str) -> dict[str, Any]:
    [found] = [c for c in pod["spec"]["containers"] if c["name"] == name]
    return found


def mount(c: dict[str, Any], path: str) -> dict[str, Any]:
    best = [m for m in c.get("volumeMounts", []) if (path + "/").startswith(m["mountPath"] + "/")]
    assert best, f"{c['name']}: nothing mounted at {path}"
    return max(best, key=lambda m: len(m["mountPath"]))


def agent_options() -> Any:
    from wasm_agent.agent import cli

    args = container(injected_pod(), "wasm-agent")["args"]
    assert args[0] == "proxy"
    module = __import__(cli.COMMANDS["proxy"][0], fromlist=["_"])
    return cli._command_parser("proxy", module).parse_args(args[1:])


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_the_injected_pod_and_the_workload_are_valid_kubernetes(version: str) -> None:
    kubernetes_validate.validate(workload(), version, strict=True)
    kubernetes_validate.validate(injected_pod(), version, strict=True)


def test_envoy_dials_wasm_agent_and_wasm_agent_dials_pilot_agent() -> None:
    pod = injected_pod()
    options = agent_options()
    proxy_config = yaml.safe_load(
        workload()["spec"]["template"]["metadata"]["annotations"]["proxy.istio.io/config"]
    )
    # Envoy's bootstrap (Istio's, untouched) dials ./etc/istio/proxy/XDS from "/": wasm-agent.
    assert options.listen == "unix:" + posixpath.normpath("/" + ISTIO_BOOTSTRAP_XDS_PIPE)
    # pilot-agent listens at <configPath>/XDS; the annotation moves configPath out of the way.
    pilot_socket = posixpath.join(proxy_config["configPath"], "XDS")
    assert options.discovery_address == f"unix:{pilot_socket}"
    assert pilot_socket != options.listen.removeprefix("unix:")
    assert options.plaintext is True  # a local Unix socket; pilot-agent does TLS to istiod
    assert proxy_config["proxyMetadata"][CONVERSION_OFF] == "false"
    # Both sockets live in Istio's istio-envoy volume, seen at the same path by both containers.
    agent, envoy = container(pod, "wasm-agent"), container(pod, "istio-proxy")
    for path in (options.listen.removeprefix("unix:"), pilot_socket):
        assert mount(agent, path)["name"] == mount(envoy, path)["name"] == "istio-envoy"
        assert mount(agent, path)["mountPath"] == mount(envoy, path)["mountPath"]


def test_the_cache_is_shared_read_only_at_the_same_path() -> None:
    pod = injected_pod()
    options = agent_options()
    agent, envoy = container(pod, "wasm-agent"), container(pod, "istio-proxy")
    cache = str(options.cache_dir)
    assert mount(agent, cache)["name"] == mount(envoy, cache)["name"]
    assert mount(agent, cache)["mountPath"] == mount(envoy, cache)["mountPath"]
    # the agent's cache is a directory it creates inside the emptyDir (whose root is 0777)
    assert cache != mount(agent, cache)["mountPath"]
    assert mount(envoy, cache).get("readOnly") is True
    assert not mount(agent, cache).get("readOnly")
    [volume] = [v for v in pod["spec"]["volumes"] if v["name"] == mount(agent, cache)["name"]]
    assert "emptyDir" in volume  # per pod; the node service (deploy/kubernetes/node) shares one


def test_uids_ports_and_lockdown() -> None:
    pod = injected_pod()
    agent = container(pod, "wasm-agent")
    sc = agent["securityContext"]
    # Same UID as istio-proxy: Envoy connects to the agent's socket and reads its module files.
    assert sc["runAsUser"] == ISTIO_PROXY_UID and sc["runAsNonRoot"] is True
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    options = agent_options()
    host, _, port = options.status_address.rpartition(":")
    assert host == "0.0.0.0" and int(port) not in ISTIO_PORTS
    assert {p["containerPort"] for p in agent["ports"]} == {int(port)}
    assert agent["readinessProbe"]["httpGet"] == {"path": "/healthz/ready", "port": int(port)}
    assert mount(agent, "/tmp")["mountPath"] == "/tmp"  # read-only root: a writable TMPDIR


def test_istio_manifests_are_documented() -> None:
    text = (ROOT / "docs" / "istio.md").read_text()
    for needle in (
        "inject.istio.io/templates",
        "proxy.istio.io/config",
        CONVERSION_OFF,
        "configPath",
        "injector-values.yaml",
        "No Istio ran here",
    ):
        assert needle in text, needle
