"""Review 3, issue 14 (14-00, 14-0): a pod cannot get another pod's private module out of the
content-addressed node cache by naming another URL pinned to its sha256, and a pod's pull secret
cannot make the node service run a credential helper. The reviewer's experiments, against the real
node service, a real htpasswd ``docker-registry``, real HTTP servers and a helper script."""

from __future__ import annotations

import base64
import json
import os
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.node.harness import Kubelet, NodeProcess, Pod
from tests.support.credhelper import HelperDir
from tests.support.modserver import ModServer
from tests.support.oci_push import Pushed, RawPusher
from tests.support.registry import (
    PUSH_PASSWORD,
    PUSH_USER,
    REGISTRY_PASSWORD,
    REGISTRY_USER,
    Registry,
    refused_port,
    unique_repo,
)
from tests.support.wasm import code_module, sha256_hex
from wasm_agent.cache.model import ModuleRequest
from wasm_agent.fetch.errors import AuthFailure, FetchError
from wasm_agent.node.client import NodeModuleSource

TOKEN = "tok-S3cret-4711"
SOURCE_DENIED = "placed only for a pod whose own reference"
HELPERS_REFUSED = "the node service does not run credential helpers for pods"


class _Recording(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, handler: type[BaseHTTPRequestHandler]) -> None:
        super().__init__(("127.0.0.1", 0), handler)
        self.log: list[tuple[str, str, int]] = []  # (method, path with query, status)
        self.lock = threading.Lock()

    def record(self, method: str, path: str, status: int) -> None:
        with self.lock:
            self.log.append((method, path, status))

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    server: _Recording

    def answer(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.server.record(self.command, self.path, status)
        self.send_response(status)
        for name, value in {"Content-Length": str(len(body)), **(headers or {})}.items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def token_server() -> Iterator[tuple[_Recording, bytes]]:
    """A real HTTP server that serves one module only to ``?token=TOKEN`` (403 otherwise)."""
    module = code_module(2500, seed=41)

    class Handler(_Handler):
        def do_GET(self) -> None:
            query = parse_qs(urlsplit(self.path).query)
            self.answer(200, module) if query.get("token") == [TOKEN] else self.answer(403)

    with _Recording(Handler) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        yield server, module
        server.shutdown()
        thread.join(10)


@pytest.fixture
def fake_registry() -> Iterator[tuple[_Recording, dict[str, bytes]]]:
    """An anonymous registry an attacker runs: it answers any manifest with the bytes the test
    puts in ``manifests`` (keyed by digest), and has no blobs at all."""
    manifests: dict[str, bytes] = {}

    class Handler(_Handler):
        def do_HEAD(self) -> None:
            self.do_GET()

        def do_GET(self) -> None:
            path = urlsplit(self.path).path
            if path == "/v2/":
                return self.answer(200, b"{}")
            digest = path.rsplit("/", 1)[-1]
            if "/manifests/" in path and digest in manifests:
                body = manifests[digest]
                media = json.loads(body)["mediaType"]
                headers = {"Content-Type": media, "Docker-Content-Digest": digest}
                return self.answer(200, body, headers)
            return self.answer(404)

    with _Recording(Handler) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        yield server, manifests
        server.shutdown()
        thread.join(10)


def pull_secret(host: str, user: str, password: str) -> bytes:
    auth = base64.b64encode(f"{user}:{password}".encode()).decode()
    return json.dumps({"auths": {host: {"auth": auth}}}).encode()


def published(kubelet: Kubelet, name: str) -> Pod:
    pod = kubelet.pod(name)
    kubelet.publish(pod)
    return pod


def placed(pod: Pod) -> list[str]:
    return sorted(p.name for p in (pod.target / "modules").iterdir())


async def denied(pod: Pod, request: ModuleRequest, match: str = SOURCE_DENIED) -> str:
    with pytest.raises(AuthFailure) as error:
        await NodeModuleSource(pod.socket).get(request)
    message = str(error.value)
    assert match in message, message
    assert placed(pod) == []
    return message


async def test_http_strangers_are_denied_a_token_module(
    tmp_path: Path, token_server: tuple[_Recording, bytes]
) -> None:
    """14-00, HTTP: the owner fetched ``?token=...``; a stranger naming an unreachable URL, the
    owner's URL without its token, or another name, pinned to the sha256, gets a denial."""
    server, module = token_server
    sha = sha256_hex(module)
    base = f"http://{server.host}"
    node = NodeProcess(tmp_path / "node").start()
    try:
        with Kubelet(node) as kubelet, refused_port() as dead:
            owner, stranger = published(kubelet, "owner"), published(kubelet, "stranger")
            own = ModuleRequest(url=f"{base}/p.wasm?token={TOKEN}", sha256=sha, timeout=20)
            got = await NodeModuleSource(owner.socket).get(own)
            assert got.path.read_bytes() == module and not got.hit
            for url in (f"http://127.0.0.1:{dead}/whatever.wasm", f"{base}/p.wasm",
                        f"{base}/other-name.wasm"):  # fmt: skip
                message = await denied(stranger, ModuleRequest(url=url, sha256=sha, timeout=20))
                assert TOKEN not in message
            again = await NodeModuleSource(owner.socket).get(own)  # the owner is still served
            assert again.hit and again.path.read_bytes() == module
        # the stranger's requests were asked of the server (and refused), the owner's once
        assert sorted((p, s) for _, p, s in server.log) == [
            ("/other-name.wasm", 403), ("/p.wasm", 403), (f"/p.wasm?token={TOKEN}", 200),
        ]  # fmt: skip
        assert 'wasm_node_module_requests{result="denied"} 3' in node.metrics()
        assert TOKEN not in node.logs()
        origins = node.cache_dir / "node" / "origins.json"  # URLs kept as hashes only, 0600
        assert TOKEN not in origins.read_text() and origins.stat().st_mode & 0o777 == 0o600
    finally:
        node.cleanup()


@pytest.fixture(scope="module")
def private_image(oci_registry_basic: Registry) -> tuple[Pushed, bytes]:
    repo, module = unique_repo("private"), code_module(3000, seed=42)
    with RawPusher(oci_registry_basic.url, PUSH_USER, PUSH_PASSWORD) as pusher:
        return pusher.push_wasm_artifact(repo, "v1", module), module


async def test_oci_strangers_are_denied_a_private_module(
    tmp_path: Path,
    oci_registry_basic: Registry,
    private_image: tuple[Pushed, bytes],
    fake_registry: tuple[_Recording, dict[str, bytes]],
) -> None:
    """14-00, OCI: the owner's private module is in the node cache; a stranger asking for it by
    tag without credentials, by an unreachable ``http://`` URL pinned to its sha256, or through
    an attacker's registry that serves its manifest (same digest) but not its blobs, is denied.
    A pod whose pull secret the registry accepts gets it by digest from the cache."""
    pushed, module = private_image
    sha, host = sha256_hex(module), oci_registry_basic.host
    fake, manifests = fake_registry
    manifests[pushed.digest] = pushed.manifest
    env = {"WASM_INSECURE_REGISTRIES": f"{host},{fake.host}"}
    node = NodeProcess(tmp_path / "node", env=env).start()
    secret = pull_secret(host, REGISTRY_USER, REGISTRY_PASSWORD)
    try:
        with Kubelet(node) as kubelet, refused_port() as dead:
            owner, stranger, peer = (published(kubelet, n) for n in ("owner", "stranger", "peer"))
            tag = oci_registry_basic.oci_url(pushed.repo, "v1")
            got = await NodeModuleSource(owner.socket).get(
                ModuleRequest(url=tag, pull_secret=secret, timeout=20)
            )
            assert got.path.read_bytes() == module
            await denied(stranger, ModuleRequest(url=tag, timeout=20), "registry refused no cred")
            bogus = ModuleRequest(url=f"http://127.0.0.1:{dead}/x.wasm", sha256=sha, timeout=20)
            await denied(stranger, bogus)
            evil = f"oci://{fake.host}/evil/copy@{pushed.digest}"
            await denied(stranger, ModuleRequest(url=evil, timeout=20))
            assert ("GET", f"/v2/evil/copy/manifests/{pushed.digest}", 200) in fake.log
            assert any("/blobs/" in p and s == 404 for _, p, s in fake.log)  # asked, had none
            by_digest = oci_registry_basic.oci_url(pushed.repo, digest=pushed.digest)
            shared = await NodeModuleSource(peer.socket).get(
                ModuleRequest(url=by_digest, pull_secret=secret, timeout=20)
            )
            assert shared.hit and shared.path.read_bytes() == module
        assert oci_registry_basic.count_blob_gets(pushed.repo) == 1  # the Wasm layer, once
    finally:
        node.cleanup()


async def test_a_pull_secret_naming_a_credential_helper_is_refused(
    tmp_path: Path, oci_registry_basic: Registry, private_image: tuple[Pushed, bytes]
) -> None:
    """14-0: a pod secret holding only ``credHelpers`` / ``credsStore`` is refused and the helper
    (on the node's PATH, answering valid credentials) never runs; nor does the node's own docker
    config (with valid auths and a credsStore) serve a pod that has no secret."""
    pushed, _ = private_image
    host = oci_registry_basic.host
    helpers = HelperDir(tmp_path / "bin")
    helpers.add("nodeidentity", username=REGISTRY_USER, secret=REGISTRY_PASSWORD)
    docker = tmp_path / "docker"
    docker.mkdir()
    config = json.loads(pull_secret(host, REGISTRY_USER, REGISTRY_PASSWORD))
    (docker / "config.json").write_text(json.dumps({**config, "credsStore": "nodeidentity"}))
    env = {
        "WASM_INSECURE_REGISTRIES": host,
        "PATH": helpers.path_with(os.environ["PATH"]),
        "DOCKER_CONFIG": str(docker),
    }
    node = NodeProcess(tmp_path / "node", env=env).start()
    url = oci_registry_basic.oci_url(pushed.repo, "v1")
    try:
        with Kubelet(node) as kubelet:
            pod = published(kubelet, "tenant-b")
            for secret in (
                {"credHelpers": {host: "nodeidentity"}},
                {"credsStore": "nodeidentity"},
                {"auths": {}, "credsStore": "nodeidentity"},
            ):
                request = ModuleRequest(
                    url=url, pull_secret=json.dumps(secret).encode(), timeout=20
                )
                message = await denied(pod, request, HELPERS_REFUSED)
                assert "put the credentials in auths" in message
            await denied(pod, ModuleRequest(url=url, timeout=20), "registry refused no cred")
        assert helpers.runs("nodeidentity") == 0
    finally:
        node.cleanup()


async def test_anonymous_public_modules_are_shared(tmp_path: Path) -> None:
    """Public modules: every pod asking the same URL shares one download per node (also after a
    restart); another URL serving the same bytes costs one confirming download; a URL serving
    other bytes pinned to the sha256 is denied."""
    module = code_module(2000, seed=43)
    sha = sha256_hex(module)
    with ModServer() as server:
        url = server.serve("/public.wasm", module)
        mirror = server.serve("/mirror.wasm", module)
        liar = server.serve("/liar.wasm", code_module(2000, seed=44))
        node = NodeProcess(tmp_path / "node").start()
        try:
            with Kubelet(node) as kubelet:
                pods = [published(kubelet, f"p{i}") for i in range(3)]
                for pod in pods:
                    got = await NodeModuleSource(pod.socket).get(
                        ModuleRequest(url=url, sha256=sha, timeout=20)
                    )
                    assert got.path.read_bytes() == module
                assert server.count("/public.wasm") == 1
                other = published(kubelet, "other")
                got = await NodeModuleSource(other.socket).get(
                    ModuleRequest(url=mirror, sha256=sha, timeout=20)
                )
                assert got.hit and server.count("/mirror.wasm") == 1
                message = await denied(
                    published(kubelet, "liar"), ModuleRequest(url=liar, sha256=sha, timeout=20)
                )
                assert "sha256 mismatch" in message
            node.stop()
            node.start()
            with Kubelet(node) as kubelet:
                late = published(kubelet, "late")
                for each in (url, mirror):
                    got = await NodeModuleSource(late.socket).get(
                        ModuleRequest(url=each, sha256=sha, timeout=20)
                    )
                    assert got.hit
            assert (server.count("/public.wasm"), server.count("/mirror.wasm")) == (1, 1)
        finally:
            node.cleanup()


async def test_the_nodes_client_certificate_is_never_presented_for_pods(tmp_path: Path) -> None:
    """Review 4, 7a: a registry that authenticates the node by mTLS (``client`` in the node's
    ``hosts.toml``) would have granted every pod the node's identity. A real mTLS
    ``docker-registry``: the pod's request fails, naming the withheld certificate; the module
    is neither fetched nor placed."""
    import ssl

    import httpx

    from tests.support.mirror import TlsRegistry
    from tests.support.tls import generate

    files = generate(tmp_path / "pki", server_name="registry.test")
    with TlsRegistry(tmp_path / "registry", files, client_ca=True) as registry:
        context = ssl.create_default_context(cafile=str(files.ca))
        context.load_cert_chain(str(files.client_cert), str(files.client_key))
        repo, module = unique_repo(), code_module(3000, seed=90)
        with RawPusher(registry.url, verify=context) as pusher:
            pusher.client = httpx.Client(timeout=30.0, verify=context)
            pusher.push_wasm_artifact(repo, "v1", module)
        hosts = tmp_path / "hosts"
        (hosts / registry.host).mkdir(parents=True)
        (hosts / registry.host / "hosts.toml").write_text(
            f'ca = "{files.ca}"\nclient = [["{files.client_cert}", "{files.client_key}"]]\n'
        )
        node = NodeProcess(tmp_path / "node", "--registry-config-dir", str(hosts)).start()
        try:
            with Kubelet(node) as kubelet:
                pod = published(kubelet, "tenant")
                request = ModuleRequest(url=registry.oci_url(repo, "v1"), timeout=20)
                with pytest.raises(FetchError) as error:
                    await NodeModuleSource(pod.socket).get(request)
                assert "not presented for pods' requests" in str(error.value), error.value
                assert placed(pod) == []
            assert not list((node.cache_dir / "modules").glob("*.wasm"))
        finally:
            node.cleanup()
