"""The Kubernetes manifests of deploy/kubernetes: every document validated offline against the
Kubernetes JSON schemas shipped by ``kubernetes-validate`` (strict: unknown fields are errors),
the kustomization rendered, and the wiring between the agent, Envoy and the volumes checked."""

from __future__ import annotations

import http.server
import importlib
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.support.wasm import minimal_module, sha256_hex
from wasm_agent.core.settings import cache_settings_from_env
from wasm_agent.fetch.trust_policy import fetch_settings_from_env

ROOT = Path(__file__).resolve().parents[2]
KUBE = ROOT / "deploy" / "kubernetes"
ENVOY_DIR = ROOT / "deploy" / "envoy"
# Oldest supported (native sidecars, on by default since 1.29) and the newest schemas shipped.
K8S_VERSIONS = ("1.29", "1.37")
AGENT_IMAGE = "wasm-agent"
# The cache volume is mounted at CACHE_MOUNT; the agent's cache is a directory it creates inside
# (an emptyDir's root is world-writable, which the agent refuses for the cache itself).
CACHE_MOUNT = "/var/lib/wasm-agent"
CACHE_DIR = CACHE_MOUNT + "/cache"
# The public interface of the two commands the manifests run, as fixed in issue 6.
PROXY_FLAGS = {
    "--discovery-address",
    "--listen",
    "--cache-dir",
    "--plaintext",
    "--tls-ca",
    "--tls-cert",
    "--tls-key",
    "--token-file",
    "--tls-server-name",
    "--status-address",
    "--fetch-failure",
    "--log-level",
}
PREFETCH_FLAGS = {"-f", "--sha256", "--cache-dir", "--pull-secret", "--json", "--log-level"}
AGENT_ENV = {
    "WASM_INSECURE_REGISTRIES",
    "WASM_MODULE_EXPIRY",
    "WASM_PURGE_INTERVAL",
    "WASM_HTTP_REQUEST_TIMEOUT",
    "WASM_HTTP_REQUEST_MAX_RETRIES",
    "ISTIO_WASM_MAX_BINARY_SIZE_BYTES",
    "BLOCKED_CIDRS_IN_WASM_FETCH",
    "DOCKER_CONFIG",
    "WASM_AGENT_CACHE_DIR",
    "TMPDIR",
}
WORKLOADS = {"Deployment", "DaemonSet", "StatefulSet", "Job", "Pod"}
MiB = 1024 * 1024


# --- loading ---------------------------------------------------------------------------------


def manifest_files() -> list[Path]:
    # Helm values (istio/injector-values.yaml) are no Kubernetes objects: see test_istio.py;
    # node/ (the CSI node service) has rules of its own: a privileged plugin DaemonSet
    files = sorted(
        p
        for p in KUBE.rglob("*.y*ml")
        if p.name != "kustomization.yaml"
        and "values" not in p.name
        and p.relative_to(KUBE).parts[0] != "node"  # tests/node/test_manifests.py
    )
    assert files, KUBE
    return files


def documents(path: Path) -> list[dict[str, Any]]:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert docs, f"{path}: no YAML document"
    return docs


def kustomization() -> dict[str, Any]:
    return yaml.safe_load((KUBE / "kustomization.yaml").read_text())


def render_in_python() -> list[dict[str, Any]]:
    """What ``kustomize build`` makes of our kustomization, for the features it uses
    (file resources, namespace, labels without selectors, images)."""
    k = kustomization()
    assert set(k) <= {"apiVersion", "kind", "namespace", "labels", "resources", "images"}, k
    labels: dict[str, str] = {}
    for entry in k.get("labels", []):
        assert not entry.get("includeSelectors") and not entry.get("includeTemplates")
        labels.update(entry["pairs"])
    images = {i["name"]: i for i in k.get("images", [])}
    out = []
    for resource in k["resources"]:
        for doc in documents(KUBE / resource):
            meta = doc.setdefault("metadata", {})
            meta["labels"] = {**meta.get("labels", {}), **labels}
            if doc["kind"] == "Namespace":
                meta["name"] = k["namespace"]
            else:
                meta["namespace"] = k["namespace"]
            for container in containers(doc):
                name, _, tag = container["image"].partition(":")
                if name in images:
                    image = images[name]
                    container["image"] = f"{image.get('newName', name)}:{image.get('newTag', tag)}"
            out.append(doc)
    return out


def key(doc: dict[str, Any]) -> tuple[str, str, str]:
    meta = doc["metadata"]
    return doc["kind"], meta.get("namespace", ""), meta["name"]


def pod_spec(doc: dict[str, Any]) -> dict[str, Any] | None:
    if doc["kind"] == "Pod":
        return doc["spec"]
    if doc["kind"] in WORKLOADS:
        return doc["spec"]["template"]["spec"]
    return None


def containers(doc: dict[str, Any]) -> Iterator[dict[str, Any]]:
    spec = pod_spec(doc)
    if spec is not None:
        yield from spec.get("initContainers", [])
        yield from spec["containers"]


def workloads() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for path in manifest_files():
        for doc in documents(path):
            if pod_spec(doc) is not None:
                out.append((f"{path.relative_to(KUBE)}:{doc['metadata']['name']}", doc))
    assert len(out) >= 4
    return out


def all_docs() -> list[tuple[str, dict[str, Any]]]:
    return [
        (f"{path.relative_to(KUBE)}:{i}", doc)
        for path in manifest_files()
        for i, doc in enumerate(documents(path))
    ]


def flags(args: list[str]) -> dict[str, str | None]:
    """``--name=value`` / ``--name value`` / ``-f value`` arguments to a dict (first word is
    the subcommand and is skipped)."""
    out: dict[str, str | None] = {}
    rest = list(args[1:])
    while rest:
        word = rest.pop(0)
        assert word.startswith("-"), f"stray argument {word!r} in {args}"
        name, eq, value = word.partition("=")
        if eq:
            out[name] = value
        elif rest and not rest[0].startswith("-"):
            out[name] = rest.pop(0)
        else:
            out[name] = None
    return out


def agent_containers(doc: dict[str, Any], command: str) -> list[dict[str, Any]]:
    return [
        c
        for c in containers(doc)
        if c["image"].split(":")[0] == AGENT_IMAGE and c.get("args", [None])[0] == command
    ]


def envoy_container(doc: dict[str, Any]) -> dict[str, Any]:
    [envoy] = [c for c in containers(doc) if c["image"].startswith("envoyproxy/envoy")]
    return envoy


def mount_of(container: dict[str, Any], path: str) -> dict[str, Any]:
    """The volume mount holding ``path`` (deepest mountPath that is a prefix of it)."""
    best = None
    for mount in container.get("volumeMounts", []):
        base = mount["mountPath"].rstrip("/")
        if (path == base or path.startswith(base + "/")) and (
            best is None or len(base) > len(best["mountPath"])
        ):
            best = mount
    assert best is not None, f"{container['name']}: nothing mounted at {path}"
    return best


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in container.get("env", [])}


QUANTITY = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(m|Ki|Mi|Gi|Ti|k|M|G|T)?$")
FACTORS = {
    None: 1,
    "m": 1e-3,
    "k": 1e3,
    "M": 1e6,
    "G": 1e9,
    "T": 1e12,
    "Ki": 1024,
    "Mi": MiB,
    "Gi": 1024 * MiB,
    "Ti": 1024**4,
}


def quantity(value: str | int) -> float:
    match = QUANTITY.match(str(value))
    assert match, f"not a Kubernetes quantity: {value!r}"
    return float(match.group(1)) * FACTORS[match.group(2)]


# --- schema validation -----------------------------------------------------------------------


def test_kubernetes_validate_ships_the_schemas() -> None:
    versions = kubernetes_validate.utils.all_versions()
    for version in K8S_VERSIONS:
        assert any(v.startswith(version + ".") for v in versions), versions


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("path", manifest_files(), ids=lambda p: str(p.relative_to(KUBE)))
def test_manifest_is_valid_kubernetes(path: Path, version: str) -> None:
    for doc in documents(path):
        # Strict: additionalProperties false everywhere; a missing schema is a failure too.
        kubernetes_validate.validate(doc, version, strict=True)


def test_strict_validation_rejects_unknown_fields() -> None:
    [doc] = documents(KUBE / "sidecar" / "deployment.yaml")
    envoy_container(doc)["securityContext"]["readOnlyRootFileSystem"] = True  # typo
    with pytest.raises(kubernetes_validate.ValidationError, match="readOnlyRootFileSystem"):
        kubernetes_validate.validate(doc, K8S_VERSIONS[-1], strict=True)


def test_quantities_parse_and_requests_fit_limits() -> None:
    for where, doc in workloads():
        spec = pod_spec(doc)
        for volume in spec.get("volumes", []):
            if "emptyDir" in volume and "sizeLimit" in volume["emptyDir"]:
                quantity(volume["emptyDir"]["sizeLimit"])
        for container in containers(doc):
            resources = container.get("resources", {})
            assert set(resources) == {"requests", "limits"}, f"{where}/{container['name']}"
            for resource in ("cpu", "memory"):
                request = quantity(resources["requests"][resource])
                limit = quantity(resources["limits"][resource])
                assert 0 < request <= limit, f"{where}/{container['name']}: {resource}"


# --- kustomize -------------------------------------------------------------------------------


def test_kustomization_lists_every_manifest() -> None:
    k = kustomization()
    assert k["apiVersion"] == "kustomize.config.k8s.io/v1beta1"
    assert k["kind"] == "Kustomization"
    listed = k["resources"]
    assert len(listed) == len(set(listed))
    for resource in listed:
        assert (KUBE / resource).is_file(), f"kustomization lists missing {resource}"
    # istio/ needs an Istio control plane; it is applied on its own (docs/istio.md)
    standalone = ("istio/",)
    assert sorted(listed) == sorted(
        str(p.relative_to(KUBE))
        for p in manifest_files()
        if not str(p.relative_to(KUBE)).startswith(standalone)
    )


def test_rendered_kustomization_is_valid_and_consistent() -> None:
    rendered = render_in_python()
    kubectl = shutil.which("kubectl")
    if kubectl:  # the real renderer, offline; our own rendering must agree with it
        result = subprocess.run(
            [kubectl, "kustomize", str(KUBE)], capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, result.stderr
        real = [d for d in yaml.safe_load_all(result.stdout) if d]
        assert {key(d): d for d in real} == {key(d): d for d in rendered}
    keys = [key(d) for d in rendered]
    assert len(keys) == len(set(keys)), "duplicate resources"
    for doc in rendered:
        kubernetes_validate.validate(doc, K8S_VERSIONS[-1], strict=True)
    # Everything a pod refers to exists in the rendering (or is Istio's, or optional).
    names = {(d["kind"], d["metadata"]["name"]) for d in rendered}
    external = {("ConfigMap", "istio-ca-root-cert")}  # published in every namespace by istiod
    for doc in rendered:
        spec = pod_spec(doc)
        if spec is None:
            continue
        assert ("ServiceAccount", spec["serviceAccountName"]) in names
        for volume in spec.get("volumes", []):
            if "configMap" in volume:
                ref = ("ConfigMap", volume["configMap"]["name"])
                assert ref in names or ref in external, ref
            if "secret" in volume:
                assert volume["secret"].get("optional") is True, volume


def test_image_tag_is_the_package_version() -> None:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    [image] = [i for i in kustomization()["images"] if i["name"] == AGENT_IMAGE]
    assert image["newTag"] == version
    for _, doc in workloads():
        for container in containers(doc):
            if container["image"].split(":")[0] == AGENT_IMAGE:
                assert container["image"] == f"{AGENT_IMAGE}:{version}"


# --- security --------------------------------------------------------------------------------

ROOT_INIT = ("daemonset/daemonset.yaml:wasm-agent-node-cache", "cache-permissions")
RESTRICTED_VOLUMES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}


def test_containers_are_locked_down() -> None:
    for where, doc in workloads():
        spec = pod_spec(doc)
        assert spec["automountServiceAccountToken"] is False, where
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True and pod["runAsUser"] != 0, where
        assert pod["seccompProfile"] == {"type": "RuntimeDefault"}, where
        for name in ("hostNetwork", "hostPID", "hostIPC"):
            assert not spec.get(name), where
        for container in containers(doc):
            sc = container["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, (where, container["name"])
            assert sc["readOnlyRootFilesystem"] is True, (where, container["name"])
            assert sc["capabilities"]["drop"] == ["ALL"], (where, container["name"])
            assert not sc.get("privileged"), (where, container["name"])
            if (where, container["name"]) == ROOT_INIT:
                # The one root step: chown the hostPath cache, with CHOWN and nothing else.
                assert sc["runAsUser"] == 0 and sc["capabilities"]["add"] == ["CHOWN"]
                continue
            assert sc["runAsNonRoot"] is True, (where, container["name"])
            assert sc.get("runAsUser", pod["runAsUser"]) == 65532, (where, container["name"])
            assert not sc["capabilities"].get("add"), (where, container["name"])


def test_only_the_node_cache_variant_leaves_pod_security_restricted() -> None:
    for where, doc in workloads():
        volumes = pod_spec(doc).get("volumes", [])
        types = {next(k for k in v if k != "name") for v in volumes}
        if where.startswith("daemonset/"):
            assert types - RESTRICTED_VOLUMES == {"hostPath"}, where
            [host] = [v["hostPath"] for v in volumes if "hostPath" in v]
            assert host["path"] == CACHE_MOUNT
        else:
            assert types <= RESTRICTED_VOLUMES, (where, types)


# --- wiring: agent <-> Envoy <-> volumes -----------------------------------------------------


def bootstrap_of(doc: dict[str, Any], envoy: dict[str, Any]) -> dict[str, Any]:
    """The bootstrap Envoy is started with: ``-c PATH`` resolved through the ConfigMap."""
    args = envoy["args"]
    config_path = args[args.index("-c") + 1]
    mount = mount_of(envoy, config_path)
    [volume] = [v for v in pod_spec(doc)["volumes"] if v["name"] == mount["name"]]
    relative = config_path[len(mount["mountPath"].rstrip("/")) + 1 :]
    [item] = [i for i in volume["configMap"]["items"] if i["path"] == relative]
    [configmap] = documents(KUBE / "common" / "envoy-bootstrap.yaml")
    assert volume["configMap"]["name"] == configmap["metadata"]["name"]
    return yaml.safe_load(configmap["data"][item["key"]])


def test_bootstrap_configmap_is_a_copy_of_deploy_envoy() -> None:
    [configmap] = documents(KUBE / "common" / "envoy-bootstrap.yaml")
    files = {p.name: p.read_text() for p in ENVOY_DIR.glob("bootstrap-*.yaml")}
    assert configmap["data"] == files


def test_agent_and_envoy_share_the_socket_and_the_cache() -> None:
    proxies = 0
    for where, doc in workloads():
        agents = agent_containers(doc, "proxy")
        if not agents:
            continue
        proxies += 1
        [agent] = agents
        spec = pod_spec(doc)
        # Native sidecar: starts before Envoy, restarts on its own.
        assert agent in spec["initContainers"] and agent["restartPolicy"] == "Always", where
        options = flags(agent["args"])
        assert set(options) <= PROXY_FLAGS, set(options) - PROXY_FLAGS
        envoy = envoy_container(doc)
        # The socket: --listen, the bootstrap's pipe and one shared in-memory emptyDir.
        listen = options["--listen"]
        assert listen.startswith("unix:"), listen
        socket_path = listen.removeprefix("unix:")
        bootstrap = bootstrap_of(doc, envoy)
        xds = bootstrap["static_resources"]["clusters"][0]
        endpoint = xds["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
        assert endpoint["address"]["pipe"]["path"] == socket_path, where
        agent_mount, envoy_mount = mount_of(agent, socket_path), mount_of(envoy, socket_path)
        assert agent_mount["name"] == envoy_mount["name"], where
        assert agent_mount["mountPath"] == envoy_mount["mountPath"], where
        [socket_volume] = [v for v in spec["volumes"] if v["name"] == agent_mount["name"]]
        assert socket_volume["emptyDir"]["medium"] == "Memory", where
        # The cache: Envoy reads the rewritten local.filename at the very same path, read-only.
        cache = options["--cache-dir"]
        assert cache == CACHE_DIR
        agent_cache, envoy_cache = mount_of(agent, cache), mount_of(envoy, cache)
        assert agent_cache["name"] == envoy_cache["name"], where
        assert agent_cache["mountPath"] == envoy_cache["mountPath"] == CACHE_MOUNT, where
        assert envoy_cache.get("readOnly") is True and not agent_cache.get("readOnly"), where
        # istiod: TLS with Istio's root cert and an istio-ca token, nothing in plaintext.
        assert "--plaintext" not in options
        for flag in ("--tls-ca", "--token-file"):
            assert mount_of(agent, options[flag]).get("readOnly") is True, (where, flag)
        # Env vars: only the documented ones, with values the agent's own settings accept.
        env = env_of(agent)
        assert set(env) <= AGENT_ENV, set(env) - AGENT_ENV
        assert fetch_settings_from_env(env).max_binary_size == 256 * MiB
        assert cache_settings_from_env(cache, env).module_expiry == 24 * 3600
        # Any prefetch init container fills that same cache before the agent starts.
        for prefetch in agent_containers(doc, "prefetch"):
            assert spec["initContainers"].index(prefetch) < spec["initContainers"].index(agent)
            assert env_of(prefetch)["WASM_AGENT_CACHE_DIR"] == cache
            assert mount_of(prefetch, cache)["name"] == agent_cache["name"], where
    assert proxies == 3


def test_agent_probes_and_status_port() -> None:
    for where, doc in workloads():
        for agent in agent_containers(doc, "proxy"):
            options = flags(agent["args"])
            host, _, port = options["--status-address"].rpartition(":")
            assert host == "0.0.0.0", "kubelet probes the pod IP"
            ports = {p["name"]: p["containerPort"] for p in agent["ports"]}
            readiness = agent["readinessProbe"]["httpGet"]
            assert readiness["path"] == "/healthz/ready"
            assert ports[readiness["port"]] == int(port), where
            # Startup/liveness must not wait on readiness (Envoy starts after the startup probe).
            for probe in ("startupProbe", "livenessProbe"):
                assert ports[agent[probe]["tcpSocket"]["port"]] == int(port), (where, probe)
            annotations = doc["spec"]["template"]["metadata"]["annotations"]
            assert annotations["prometheus.io/port"] == port
            assert annotations["prometheus.io/path"] == "/metrics"
        envoy = envoy_container(doc) if agent_containers(doc, "proxy") else None
        if envoy is not None:
            bootstrap = bootstrap_of(doc, envoy)
            [listener] = bootstrap["static_resources"]["listeners"]
            ports = {p["name"]: p["containerPort"] for p in envoy["ports"]}
            probe = envoy["readinessProbe"]["httpGet"]
            assert probe["path"] == "/healthz/ready"
            assert ports[probe["port"]] == listener["address"]["socket_address"]["port_value"]


def test_agent_memory_follows_the_benchmark_figures() -> None:
    # Idle RSS target 50 MB, < 80 MB during a cold 5 MB fetch, plus a compile worker process
    # of up to ~300 MB in the same cgroup for large modules.
    checked = 0
    for where, doc in workloads():
        for container in containers(doc):
            if container["image"].split(":")[0] != AGENT_IMAGE:
                continue
            if (where, container["name"]) == ROOT_INIT:
                continue  # a chown, not the agent
            checked += 1
            resources = container["resources"]
            assert quantity(resources["requests"]["memory"]) >= 50e6, where
            assert quantity(resources["limits"]["memory"]) >= 80e6 + 300e6, where
    assert checked == 5  # three proxies, the init prefetch, the DaemonSet's prefetch loop


def test_prefetch_commands_use_the_public_interface() -> None:
    seen = 0
    for where, doc in workloads():
        for container in containers(doc):
            if container["image"].split(":")[0] != AGENT_IMAGE:
                continue
            args = container.get("args", [])
            if args[:1] == ["prefetch"]:
                options = flags(args)
            elif container.get("command") == ["/bin/sh", "-c"] and "prefetch" in args[0]:
                [words] = re.findall(r"^\s*if wasm-agent (prefetch [^;]*);", args[0], re.M)
                options = flags(words.split())
            else:
                continue
            seen += 1
            assert set(options) <= PREFETCH_FLAGS, (where, options)
            plugins = options["-f"]
            mount = mount_of(container, plugins)
            [volume] = [v for v in pod_spec(doc)["volumes"] if v["name"] == mount["name"]]
            [configmap] = documents(KUBE / "common" / "wasmplugins.yaml")
            assert volume["configMap"]["name"] == configmap["metadata"]["name"]
            assert plugins.rsplit("/", 1)[1] in configmap["data"]
            env = env_of(container)
            assert set(env) <= AGENT_ENV | {"PREFETCH_INTERVAL_SECONDS"}, where
            assert env["WASM_AGENT_CACHE_DIR"] == CACHE_DIR
            assert cache_settings_from_env(None, env).directory == Path(CACHE_DIR)
            settings = fetch_settings_from_env(env)
            assert settings.docker_config_dir == Path(env["DOCKER_CONFIG"])
            assert env["DOCKER_CONFIG"] == mount_of(container, env["DOCKER_CONFIG"])["mountPath"]
    assert seen == 2  # the init-prefetch example and the DaemonSet


def test_wasmplugin_list_holds_wasmplugins() -> None:
    [configmap] = documents(KUBE / "common" / "wasmplugins.yaml")
    plugins = [d for d in yaml.safe_load_all(configmap["data"]["wasmplugins.yaml"]) if d]
    assert plugins
    for plugin in plugins:
        assert plugin["apiVersion"] in ("extensions.istio.io/v1alpha1", "extensions.istio.io/v1")
        assert plugin["kind"] == "WasmPlugin"
        spec = plugin["spec"]
        url = spec["url"]
        scheme = url.split("://", 1)[0] if "://" in url else "oci"
        assert scheme in ("oci", "http", "https"), url
        if "sha256" in spec:
            assert re.fullmatch(r"[0-9a-f]{64}", spec["sha256"]), spec["sha256"]
        assert spec.get("imagePullPolicy", "UNSPECIFIED_POLICY") in (
            "UNSPECIFIED_POLICY",
            "IfNotPresent",
            "Always",
        )


def test_daemonset_shares_the_node_cache_with_the_workload() -> None:
    [daemonset] = documents(KUBE / "daemonset" / "daemonset.yaml")
    [workload] = documents(KUBE / "daemonset" / "workload.yaml")
    ds_spec, wl_spec = pod_spec(daemonset), pod_spec(workload)
    [ds_cache] = [v["hostPath"] for v in ds_spec["volumes"] if "hostPath" in v]
    [wl_cache] = [v["hostPath"] for v in wl_spec["volumes"] if "hostPath" in v]
    assert ds_cache == {"path": CACHE_MOUNT, "type": "DirectoryOrCreate"}
    # The workload waits for the DaemonSet to create (and chown) the directory.
    assert wl_cache == {"path": CACHE_MOUNT, "type": "Directory"}
    # Every process writing or reading the node cache runs as the UID that owns it.
    [init] = [c for c in ds_spec["initContainers"] if c["name"] == ROOT_INIT[1]]
    assert init["command"] == ["chown", "65532:65532", CACHE_MOUNT]
    assert ds_spec["securityContext"]["runAsUser"] == wl_spec["securityContext"]["runAsUser"]
    # Runs on every node, tainted ones included, and shuts down promptly on SIGTERM.
    assert {"operator": "Exists"} in ds_spec["tolerations"]
    [prefetch] = ds_spec["containers"]
    assert "trap 'exit 0' TERM" in prefetch["args"][0]


# --- the containers' commands, parsed and run by the real agent ------------------------------


def test_agent_arguments_parse_with_the_real_commands() -> None:
    from wasm_agent.agent import cli

    parsed = 0
    for where, doc in workloads():
        for container in containers(doc):
            args = container.get("args", [])
            if container["image"].split(":")[0] != AGENT_IMAGE or args[:1] not in (
                ["proxy"],
                ["prefetch"],
            ):
                continue
            name = args[0]
            module = importlib.import_module(cli.COMMANDS[name][0])
            options = cli._command_parser(name, module).parse_args(args[1:])
            parsed += 1
            if name == "proxy":
                assert options.listen == "unix:/etc/istio/proxy/XDS", where
                assert options.cache_dir == CACHE_DIR
                assert options.plaintext is False
                assert options.fetch_failure == "nack"
            else:
                assert [str(p) for p in options.files] == [
                    "/etc/wasm-agent/plugins/wasmplugins.yaml"
                ]
    assert parsed == 4  # three proxies and the init prefetch


def test_wasmplugin_list_loads_with_the_agent_reader(tmp_path: Path) -> None:
    from wasm_agent.agent.wasmplugin import load_wasmplugins

    [configmap] = documents(KUBE / "common" / "wasmplugins.yaml")
    path = tmp_path / "wasmplugins.yaml"
    path.write_text(configmap["data"]["wasmplugins.yaml"])
    plugins = load_wasmplugins(path)
    assert [p.name for p in plugins] == ["basic-auth"]
    assert plugins[0].url.startswith("oci://")


class ModuleServer:
    """Serves one Wasm module over HTTP on 127.0.0.1 and counts the requests."""

    def __init__(self, body: bytes) -> None:
        outer = self
        self.count = 0

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.count += 1
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/plugin.wasm"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def node(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """A stand-in for a node: a module server, a WasmPlugin list naming it, a `wasm-agent`
    on PATH, and the directories the containers mount."""
    module = minimal_module()
    server = ModuleServer(module)
    plugins = tmp_path / "wasmplugins.yaml"
    plugins.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "extensions.istio.io/v1alpha1",
                "kind": "WasmPlugin",
                "metadata": {"name": "example", "namespace": "istio-system"},
                "spec": {"url": server.url, "sha256": sha256_hex(module)},
            }
        )
    )
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls"
    shim = bin_dir / "wasm-agent"
    shim.write_text(
        f'#!/bin/sh\n"{sys.executable}" -m wasm_agent "$@"\nrc=$?\necho $rc >> "{calls}"\n'
        "exit $rc\n"
    )
    shim.chmod(0o755)
    (tmp_path / "cache").mkdir()
    (tmp_path / "docker").mkdir()
    (tmp_path / "tmp").mkdir()
    try:
        yield {
            "dir": tmp_path,
            "module": module,
            "server": server,
            "plugins": plugins,
            "calls": calls,
            "PATH": f"{bin_dir}:{os.environ['PATH']}",
        }
    finally:
        server.close()


def mover(node: dict[str, Any]) -> Callable[[str], str]:
    """Rewrites the containers' mount points to the node fixture's directories."""
    moves = {
        "/etc/wasm-agent/plugins/wasmplugins.yaml": str(node["plugins"]),
        "/etc/wasm-agent/docker": str(node["dir"] / "docker"),
        CACHE_MOUNT: str(node["dir"] / "cache"),
        "/tmp": str(node["dir"] / "tmp"),
    }
    pattern = re.compile(r"(?<![\w/.-])(" + "|".join(map(re.escape, moves)) + r")(?=[/\s\"';]|$)")
    return lambda text: pattern.sub(lambda m: moves[m.group(1)], text)


def localized(container: dict[str, Any], node: dict[str, Any]) -> tuple[list[str], dict]:
    """The container's command line and environment with its mount points moved."""
    move = mover(node)
    command = [move(w) for w in container.get("command", ["wasm-agent"]) + container["args"]]
    env = {k: move(v) for k, v in env_of(container).items()}
    env.update(PATH=node["PATH"], PYTHONPATH=str(ROOT), HOME=str(node["dir"] / "tmp"))
    return command, env


def cached_files(node: dict[str, Any]) -> list[Path]:
    return [p for p in (node["dir"] / "cache").rglob("*.wasm") if p.is_file()]


def test_init_prefetch_container_fills_the_pod_cache(node: dict[str, Any]) -> None:
    [doc] = documents(KUBE / "init-prefetch" / "deployment.yaml")
    [prefetch] = agent_containers(doc, "prefetch")
    command, env = localized(prefetch, node)
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    [module] = cached_files(node)
    assert module.read_bytes() == node["module"]
    assert str(module) in result.stdout
    # A pod restart finds it cached: no second download.
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert node["server"].count == 1


def test_daemonset_loop_keeps_the_node_cache_warm_and_stops_on_sigterm(
    node: dict[str, Any],
) -> None:
    [doc] = documents(KUBE / "daemonset" / "daemonset.yaml")
    [loop] = pod_spec(doc)["containers"]
    marker = loop["readinessProbe"]["exec"]["command"][-1]
    assert marker in loop["args"][0]
    command, env = localized(loop, node)
    env["PREFETCH_INTERVAL_SECONDS"] = "0.2"
    ready = Path(mover(node)(marker))
    process = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)

    def passes() -> int:
        return len(node["calls"].read_text().split()) if node["calls"].exists() else 0

    def wait_for_passes(count: int) -> None:
        deadline = time.monotonic() + 60
        while passes() < count:
            assert process.poll() is None, process.stderr.read()
            assert time.monotonic() < deadline, f"the loop did not run {count} passes"
            time.sleep(0.05)

    try:
        wait_for_passes(1)
        # The loop writes the marker right after the shim has recorded the pass.
        deadline = time.monotonic() + 30
        while not ready.exists():
            assert time.monotonic() < deadline, "the readiness marker was not written"
            time.sleep(0.05)
        [module] = cached_files(node)
        assert module.read_bytes() == node["module"]
        # Make the module look unused for ten days: the next warm passes mark it used again,
        # so the agents' purge (WASM_MODULE_EXPIRY) never removes a module a WasmPlugin names.
        old = time.time() - 10 * 86400
        os.utime(module, (old, old))
        wait_for_passes(passes() + 2)
        assert module.stat().st_mtime > time.time() - 60
        assert set(node["calls"].read_text().split()) == {"0"}
        assert node["server"].count == 1, "warm passes must not download again"
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0, "SIGTERM must end the loop cleanly"
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
