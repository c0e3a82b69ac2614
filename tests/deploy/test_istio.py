"""deploy/kubernetes/istio: wasm-agent beside pilot-agent in a real Istio mesh.

No Istio runs here. What is checked: Istio's injection is reproduced the way istiod does it (the
`sidecar` template's istio-proxy container and istio-envoy volume, then our `wasm-agent` template
merged by name), the result validates strictly against the Kubernetes schemas, and the wiring holds:
Envoy's bootstrap (Istio's template, rendered here for its xds-grpc pipe with the annotation's
configPath) dials wasm-agent, wasm-agent dials pilot-agent's relocated socket, the cache is shared
read-only, UIDs and ports do not collide, and the arguments parse with the real CLI.

Once a finding (review 3, 10-J): since Istio 1.11 the stock template's pipe is
``{{ .config.ConfigPath }}/XDS``, pilot-agent's own socket, so moving configPath moved Envoy too and
it bypassed wasm-agent; the old test compared against a constant (the pre-1.11 path).
"""

from __future__ import annotations

import copy
import hashlib
import posixpath
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
ISTIO = ROOT / "deploy" / "kubernetes" / "istio"
K8S_VERSIONS = ("1.29", "1.37")
# Istio's envoy_bootstrap.json (istio/istio tools/packaging/common/, 1.11 to 1.30.3 and master
# 86c9f01, Aug 2026): the xds-grpc cluster's pipe, a pinned copy of the line; pilot-agent listens
# on the same expression (pilot/cmd/pilot-agent/options/agent.go: filepath.Join(ConfigPath, "XDS")).
ISTIO_XDS_PIPE_LINE = '"path": "{{ .config.ConfigPath }}/XDS"'
ISTIO_DEFAULT_CONFIG_PATH = "./etc/istio/proxy"  # ProxyConfig.configPath's default
BOOTSTRAP_CONFIGMAP = ISTIO / "bootstrap-template.yaml"
BOOTSTRAP_KEY = "envoy_bootstrap_tmpl.json"
ISTIO_VERSION = "1.30.3"  # the template shipped in bootstrap-template.yaml (same in 1.29.0-1.30.3)
ISTIO_PROXY_UID = 1337
# Ports Istio's sidecar uses (admin, outbound, inbound, tunnel, status, health, DNS, Prometheus).
ISTIO_PORTS = {15000, 15001, 15004, 15006, 15008, 15009, 15020, 15021, 15053, 15090}
CONVERSION_OFF = "ISTIO_AGENT_ENABLE_WASM_REMOTE_LOAD_CONVERSION"


def template() -> dict[str, Any]:
    values = yaml.safe_load((ISTIO / "injector-values.yaml").read_text())
    text = values["sidecarInjectorWebhook"]["templates"]["wasm-agent"]
    assert "{{" not in text, "the template is plain YAML: nothing for istiod to render"
    return yaml.safe_load(text)


def bootstrap_configmap() -> dict[str, Any]:
    [doc] = [d for d in yaml.safe_load_all(BOOTSTRAP_CONFIGMAP.read_text()) if d]
    return doc


def render_xds_pipe(template_text: str, config_path: str) -> str:
    """The absolute path Envoy dials for xds-grpc: the cluster's pipe in Istio's Go template,
    ``{{ .config.ConfigPath }}`` rendered with ``config_path``, relative to Envoy's cwd ``/``."""
    cluster = template_text.index('"name": "xds-grpc"')
    match = re.compile(r'"pipe":\s*\{\s*"path":\s*"([^"]*)"').search(template_text, cluster)
    assert match is not None, "no pipe in the xds-grpc cluster"
    path = re.sub(r"\{\{\s*\.config\.ConfigPath\s*\}\}", config_path, match.group(1))
    assert "{{" not in path, f"unrendered template expression in {path!r}"
    return posixpath.normpath(posixpath.join("/", path))


def proxy_config() -> dict[str, Any]:
    """The workload's ``proxy.istio.io/config`` annotation."""
    annotations = workload()["spec"]["template"]["metadata"]["annotations"]
    return yaml.safe_load(annotations["proxy.istio.io/config"])


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
            "image": "docker.io/istio/proxyv2:" + ISTIO_VERSION,
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
    kubernetes_validate.validate(bootstrap_configmap(), version, strict=True)


def test_envoy_dials_wasm_agent_and_wasm_agent_dials_pilot_agent() -> None:
    pod = injected_pod()
    options = agent_options()
    config = proxy_config()
    config_path = config.get("configPath", ISTIO_DEFAULT_CONFIG_PATH)
    # pilot-agent listens at <configPath>/XDS; the annotation moves configPath out of the way.
    pilot_socket = posixpath.normpath(posixpath.join("/", config_path, "XDS"))
    assert options.discovery_address == f"unix:{pilot_socket}"
    # Istio's stock template would dial pilot-agent, wherever configPath goes (the bypass).
    stock = '"name": "xds-grpc", "pipe": {' + ISTIO_XDS_PIPE_LINE + "}"
    assert render_xds_pipe(stock, config_path) == pilot_socket
    # The template the workload selects, rendered with the annotation's configPath: wasm-agent.
    template_text = bootstrap_configmap()["data"][BOOTSTRAP_KEY]
    envoy_dials = render_xds_pipe(template_text, config_path)
    assert f"unix:{envoy_dials}" == options.listen
    assert envoy_dials != pilot_socket
    assert options.plaintext is True  # a local Unix socket; pilot-agent does TLS to istiod
    assert config["proxyMetadata"][CONVERSION_OFF] == "false"
    # Both sockets live in Istio's istio-envoy volume, seen at the same path by both containers.
    agent, envoy = container(pod, "wasm-agent"), container(pod, "istio-proxy")
    for path in (options.listen.removeprefix("unix:"), pilot_socket):
        assert mount(agent, path)["name"] == mount(envoy, path)["name"] == "istio-envoy"
        assert mount(agent, path)["mountPath"] == mount(envoy, path)["mountPath"]


def test_istio_proxy_reads_the_pinned_template_from_the_configmap() -> None:
    """``proxyBootstrapTemplatePath`` (pkg/bootstrap/instance.go GetEffectiveTemplatePath) names
    the ConfigMap's key, mounted read-only into istio-proxy by the injection template."""
    pod = injected_pod()
    envoy = container(pod, "istio-proxy")
    template_path = proxy_config()["proxyBootstrapTemplatePath"]
    assert posixpath.basename(template_path) == BOOTSTRAP_KEY
    where = mount(envoy, template_path)
    assert where["mountPath"] == posixpath.dirname(template_path) and where["readOnly"] is True
    [volume] = [v for v in pod["spec"]["volumes"] if v["name"] == where["name"]]
    cm = bootstrap_configmap()
    assert volume["configMap"] == {"name": cm["metadata"]["name"]}  # not optional: fail closed
    assert BOOTSTRAP_KEY in cm["data"]
    assert cm["metadata"]["annotations"]["wasm-agent.io/istio-version"] == ISTIO_VERSION


def test_the_template_is_istios_with_only_the_xds_pipe_changed() -> None:
    """Put Istio's line back: the bytes hash to the recorded sha256 of Istio's file; and the
    shipped ConfigMap is exactly what bootstrap_configmap.py makes from that file."""
    cm = bootstrap_configmap()
    pinned = cm["data"][BOOTSTRAP_KEY]
    listen = agent_options().listen.removeprefix("unix:")
    assert pinned.count(f'"path": "{listen}"') == 1
    assert "ConfigPath" not in pinned  # nothing else in Envoy's bootstrap follows configPath
    original = pinned.replace(f'"path": "{listen}"', ISTIO_XDS_PIPE_LINE)
    recorded = cm["metadata"]["annotations"]["wasm-agent.io/istio-template-sha256"]
    assert hashlib.sha256(original.encode()).hexdigest() == recorded
    made = subprocess.run(
        [sys.executable, str(ISTIO / "bootstrap_configmap.py"), "--istio-version", ISTIO_VERSION,
         "--socket", listen, "-"],
        input=original, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    assert made.stdout == BOOTSTRAP_CONFIGMAP.read_text()


def test_bootstrap_configmap_refuses_a_template_it_cannot_pin(tmp_path: Path) -> None:
    """A pre-1.11 template (fixed pipe) or one with no xds-grpc pipe: exit 1, saying why."""
    old = tmp_path / "old.json"
    old.write_text('{"name": "xds-grpc", "pipe": {"path": "./etc/istio/proxy/XDS"}}\n')
    script = str(ISTIO / "bootstrap_configmap.py")
    result = subprocess.run([sys.executable, script, "--istio-version", "1.10.0", str(old)],
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    assert result.returncode == 1 and result.stdout == ""
    assert "expected exactly one" in result.stderr and "Istio 1.11 or later" in result.stderr
    missing = subprocess.run([sys.executable, script, str(old)], capture_output=True, text=True,
                             timeout=60)  # fmt: skip
    assert missing.returncode == 2 and "--istio-version" in missing.stderr


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
        "proxyBootstrapTemplatePath",
        "bootstrap_configmap.py",
        "1.30.3",
    ):
        assert needle in text, needle
