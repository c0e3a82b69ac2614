"""A real Debian ``docker-registry`` (distribution 2.8) on 127.0.0.1 for tests.

Modes: anonymous, ``htpasswd`` (Basic auth) and ``token`` (Bearer tokens from a
:class:`tests.support.tokenserver.TokenServer`, or any realm URL); plain HTTP, or HTTPS with
``tls=`` (:func:`tests.support.modserver.self_signed_cert`). Storage is a directory of
the caller's; the access log is kept so tests can count requests::

    with Registry(tmp_path / "reg") as reg:
        ...
        assert reg.count_requests("GET", r"/v2/myrepo/blobs/") == 1

Use unique repository names per test (:func:`unique_repo`) so counts do not mix.

Session fixtures (registered in ``tests/conftest.py``): ``oci_registry`` (anonymous),
``oci_registry_basic`` (htpasswd: :data:`REGISTRY_USER`, :data:`PUSH_USER`),
``oci_registry_token`` with ``oci_token_server`` (policy :data:`TOKEN_ACCESS`), and
``oci_pusher`` (a :class:`~tests.support.oci_push.RawPusher` for ``oci_registry``). All serve
plain HTTP on 127.0.0.1: put ``registry.host`` in ``FetchSettings.insecure_registries``.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.modserver import TLSFiles
from tests.support.oci_push import RawPusher
from tests.support.tokenserver import ISSUER, SERVICE, TokenPolicy, TokenServer

REGISTRY_BIN = shutil.which("docker-registry") or "/usr/bin/docker-registry"
_ACCESS_LINE = re.compile(r'^\S+ - \S+ \[[^\]]+\] "(?P<method>[A-Z]+) (?P<path>\S+) HTTP/[\d.]+" ')


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port the OS says is free right now."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def refused_port(host: str = "127.0.0.1") -> Iterator[int]:
    """A port that refuses connections while the block runs: bound but never listening, so
    no other test or process can take it meanwhile (a port from :func:`free_port` can be)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        yield sock.getsockname()[1]


def unique_repo(prefix: str = "wasm") -> str:
    """A repository name no other test uses."""
    return f"{prefix}/{uuid.uuid4().hex[:12]}"


def htpasswd_line(user: str, password: str) -> str:
    """A bcrypt htpasswd line made by Debian's ``htpasswd -Bbn``."""
    out = subprocess.run(
        ["htpasswd", "-Bbn", user, password], check=True, capture_output=True, text=True
    )
    return out.stdout.strip()


class Registry:
    """One running ``docker-registry`` process.

    ``users`` turns on htpasswd auth; ``token_realm`` (with ``token_cert`` and ``token_service``,
    ``token_issuer``) turns on token auth instead.
    """

    def __init__(
        self,
        directory: Path,
        *,
        users: dict[str, str] | None = None,
        token_realm: str | None = None,
        token_cert: Path | None = None,
        token_service: str = "",
        token_issuer: str = "",
        tls: TLSFiles | None = None,
    ) -> None:
        self.directory = directory
        self.storage = directory / "storage"
        self.log_path = directory / "registry.log"
        self.users = users or {}
        self.token_realm = token_realm
        self.token_cert = token_cert
        self.token_service = token_service
        self.token_issuer = token_issuer
        self.tls = tls
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def host(self) -> str:
        """``127.0.0.1:<port>``, the registry part of an ``oci://`` reference."""
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}"

    def oci_url(self, repo: str, tag: str | None = None, digest: str | None = None) -> str:
        """``oci://127.0.0.1:<port>/<repo>:<tag>`` or ``...@<digest>``."""
        if digest:
            return f"oci://{self.host}/{repo}@{digest}"
        return f"oci://{self.host}/{repo}:{tag or 'latest'}"

    def _config(self) -> str:
        lines = [
            "version: 0.1",
            "log:",
            "  level: info",
            "  accesslog:",
            "    disabled: false",
            "storage:",
            "  filesystem:",
            f"    rootdirectory: {self.storage}",
            "  delete:",
            "    enabled: true",
            "http:",
            f"  addr: 127.0.0.1:{self.port}",
            "  secret: wasm-agent-test-secret",
        ]
        if self.tls:
            lines += [
                "  tls:",
                f"    certificate: {self.tls.cert}",
                f"    key: {self.tls.key}",
            ]
        if self.token_realm:
            lines += [
                "auth:",
                "  token:",
                f"    realm: {self.token_realm}",
                f"    service: {self.token_service}",
                f"    issuer: {self.token_issuer}",
                f"    rootcertbundle: {self.token_cert}",
            ]
        elif self.users:
            htpasswd = self.directory / "htpasswd"
            htpasswd.write_text(
                "\n".join(htpasswd_line(u, p) for u, p in self.users.items()) + "\n"
            )
            lines += ["auth:", "  htpasswd:", "    realm: basic-realm", f"    path: {htpasswd}"]
        return "\n".join(lines) + "\n"

    def start(self) -> Registry:
        self.directory.mkdir(parents=True, exist_ok=True)
        for _attempt in range(5):
            self.port = free_port()
            config = self.directory / "config.yml"
            config.write_text(self._config())
            log = self.log_path.open("ab")
            self._proc = subprocess.Popen(
                [REGISTRY_BIN, "serve", str(config)], stdout=log, stderr=subprocess.STDOUT
            )
            log.close()
            if self._wait_ready():
                return self
            self.stop()
        raise RuntimeError(f"docker-registry did not start; see {self.log_path}")

    def _wait_ready(self, timeout: float = 30.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc is None or self._proc.poll() is not None:
                return False
            try:
                status = httpx.get(f"{self.url}/v2/", timeout=1.0, verify=False).status_code
            except httpx.HTTPError:
                time.sleep(0.05)
                continue
            if status in (200, 401):
                return True
        return False

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._proc = None

    def __enter__(self) -> Registry:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- what happened -------------------------------------------------------------------------

    def _get(self, url: str, timeout: float) -> None:
        """One GET to this registry (subclasses add TLS client settings)."""
        httpx.get(url, timeout=timeout, verify=False)

    def sync_log(self, timeout: float = 30.0) -> None:
        """Wait until every request answered so far is in the access log.

        Sends a marker request and waits for its line: the registry logs a request after
        answering it, so a count taken right after a client returns could miss the last one.
        A loaded machine can take seconds for either step: both are retried until ``timeout``,
        and a registry that never logs the marker fails the test rather than an undercount.
        """
        marker = f"/v2/_log_marker/{uuid.uuid4().hex}/tags/list"
        deadline = time.monotonic() + timeout
        while True:
            try:
                self._get(f"{self.url}{marker}", max(1.0, deadline - time.monotonic()))
                break
            except httpx.HTTPError as error:
                if self._proc is None or self._proc.poll() is not None:
                    return  # stopped: its log is complete
                if time.monotonic() >= deadline:
                    message = f"docker-registry: log marker not answered: {error}"
                    raise RuntimeError(message) from error
                time.sleep(0.05)
        while marker not in self.log_path.read_text(errors="replace"):
            if time.monotonic() >= deadline:
                raise RuntimeError(f"docker-registry: log marker not logged in {timeout}s")
            time.sleep(0.02)

    def requests(self) -> list[tuple[str, str]]:
        """(method, path) of every request in the access log, oldest first."""
        self.sync_log()
        out = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            match = _ACCESS_LINE.match(line)
            if match and "/_log_marker/" not in match["path"]:
                out.append((match["method"], match["path"]))
        return out

    def count_requests(self, method: str, path_regex: str) -> int:
        """How many ``method`` requests had a path matching ``path_regex`` (``re.search``)."""
        pattern = re.compile(path_regex)
        return sum(1 for m, p in self.requests() if m == method and pattern.search(p))

    def count_blob_gets(self, repo: str) -> int:
        """How many blob downloads (``GET /v2/<repo>/blobs/...``) the registry served."""
        return self.count_requests("GET", rf"^/v2/{re.escape(repo)}/blobs/")

    # -- storage-level access (tampering) ------------------------------------------------------

    def blob_path(self, digest: str) -> Path:
        """The file holding blob ``digest`` in the registry's filesystem storage."""
        algorithm, hexdigest = digest.split(":", 1)
        return (
            self.storage
            / "docker/registry/v2/blobs"
            / algorithm
            / hexdigest[:2]
            / hexdigest
            / "data"
        )

    def wait_for_blob(self, repo: str, digest: str, timeout: float = 30.0) -> None:
        """Wait until blob ``digest`` is stored and linked into ``repo`` (a pull-through cache
        stores a blob after it has streamed it to the client, so a fetch returning is not
        enough; the link is written last)."""
        algorithm, hexdigest = digest.split(":", 1)
        link = self.storage / "docker/registry/v2/repositories" / repo / "_layers"
        link = link / algorithm / hexdigest / "link"
        deadline = time.monotonic() + timeout
        while not (link.exists() and self.blob_path(digest).exists()):
            if time.monotonic() >= deadline:
                raise TimeoutError(f"docker-registry: blob {digest} not stored in {timeout}s")
            time.sleep(0.05)

    def tamper_blob(self, digest: str, data: bytes) -> None:
        """Replace the stored bytes of blob ``digest`` (the registry keeps serving it)."""
        path = self.blob_path(digest)
        if not path.exists():
            raise FileNotFoundError(path)
        path.write_bytes(data)


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


# -- pytest fixtures (registered in tests/conftest.py) ---------------------------------------------

REGISTRY_USER = "alice"
REGISTRY_PASSWORD = "alice-S3cret!pw"
PUSH_USER = "pusher"
PUSH_PASSWORD = "pusher-S3cret!pw"
OTHER_USER = "bob"
OTHER_PASSWORD = "bob-S3cret!pw"
# Token-auth registry policy: alice may pull ``alice/*``; bob may pull ``bob/*``; the pusher may
# push and pull anything; anonymous users may pull ``public/*``.
TOKEN_ACCESS = {
    REGISTRY_USER: {"alice/*": {"pull"}},
    OTHER_USER: {"bob/*": {"pull"}},
    PUSH_USER: {"*": {"pull", "push"}},
}
TOKEN_ANONYMOUS = {"public/*": {"pull"}}


@pytest.fixture(scope="session")
def oci_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """An anonymous registry (plain HTTP on 127.0.0.1) shared by the session."""
    with Registry(tmp_path_factory.mktemp("registry-anon")) as reg:
        yield reg


@pytest.fixture(scope="session")
def oci_registry_basic(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """A registry with htpasswd (Basic) auth: users :data:`REGISTRY_USER`, :data:`PUSH_USER`."""
    users = {REGISTRY_USER: REGISTRY_PASSWORD, PUSH_USER: PUSH_PASSWORD}
    with Registry(tmp_path_factory.mktemp("registry-basic"), users=users) as reg:
        yield reg


@pytest.fixture(scope="session")
def oci_token_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TokenServer]:
    """The token server behind :func:`oci_registry_token` (policy :data:`TOKEN_ACCESS`)."""
    policy = TokenPolicy(
        users={
            REGISTRY_USER: REGISTRY_PASSWORD,
            OTHER_USER: OTHER_PASSWORD,
            PUSH_USER: PUSH_PASSWORD,
        },
        access=TOKEN_ACCESS,
        anonymous=TOKEN_ANONYMOUS,
    )
    with TokenServer(tmp_path_factory.mktemp("token-server"), policy) as server:
        yield server


@pytest.fixture(scope="session")
def oci_registry_token(
    tmp_path_factory: pytest.TempPathFactory, oci_token_server: TokenServer
) -> Iterator[Registry]:
    """A registry with token auth (Bearer JWTs from :func:`oci_token_server`)."""
    with Registry(
        tmp_path_factory.mktemp("registry-token"),
        token_realm=oci_token_server.realm,
        token_cert=oci_token_server.cert_path,
        token_service=SERVICE,
        token_issuer=ISSUER,
    ) as reg:
        yield reg


@pytest.fixture(scope="session")
def oci_pusher(oci_registry: Registry) -> Iterator[RawPusher]:
    """A :class:`RawPusher` for :func:`oci_registry`."""
    with RawPusher(oci_registry.url) as pusher:
        yield pusher
