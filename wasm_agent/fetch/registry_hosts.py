"""Registry hosts: containerd's ``hosts.toml`` (the ``certs.d`` layout) for mirrors and TLS.

``<dir>/<host>/hosts.toml`` (``<dir>`` is ``--registry-config-dir``) configures the registry
``<host>`` (``host:port`` or containerd's ``host_port_``; Docker Hub is ``docker.io``;
``_default`` applies to registries without their own directory)::

    server = "https://registry.example.com"      # the upstream (default: https://<host>)
    ca = "upstream-ca.pem"                         # fields at the top level: for the server

    [host."https://mirror.example.com"]          # mirrors, tried in order, then the server
      capabilities = ["pull", "resolve"]         # "resolve": may turn a tag into a digest
      ca = ["mirror-ca.pem"]                     # added to the system trust store
      client = [["client.pem", "client-key.pem"]]  # or "both.pem", or ["a.pem", ...]
      skip_verify = false
      override_path = false                      # true: the URL path is the API root

Relative paths are relative to the ``hosts.toml``'s directory. A host directory without
``hosts.toml`` is read the Docker way: ``*.crt`` are CAs, ``<name>.cert`` + ``<name>.key`` a
client certificate, for the upstream. Mirrors get the ``ns=<registry>`` query parameter, as
containerd sends it. Unknown keys are ignored, as containerd does.
"""

from __future__ import annotations

import logging
import os
import ssl
import tomllib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote, urlsplit

import httpx

from wasm_agent.core.errors import WasmAgentError
from wasm_agent.core.settings import FetchSettings
from wasm_agent.fetch.dockerconfig import Credentials
from wasm_agent.fetch.errors import DownloadFailure
from wasm_agent.fetch.oci_http import RegistryConnection
from wasm_agent.fetch.reference import DOCKER_HUB, OciReference
from wasm_agent.fetch.retry import Backoff
from wasm_agent.fetch.transport import describe_transport_error, make_client

log = logging.getLogger(__name__)

T = TypeVar("T")

HOSTS_FILE = "hosts.toml"
DEFAULT_DIR = "_default"
ALL_CAPABILITIES = frozenset({"pull", "resolve", "push"})
MAX_HOSTS_FILE = 1 << 20


class HostsConfigError(WasmAgentError, ValueError):
    """A ``hosts.toml`` (or a file it names) is unusable; the message names the file."""


@dataclass(frozen=True)
class Endpoint:
    """One host to send registry API requests to.

    ``host`` is ``name[:port]``; ``root`` the API root path (``/v2`` unless ``override_path``);
    ``mirror`` is True for a ``[host]`` entry (not the upstream server).
    """

    scheme: str
    host: str
    root: str = "/v2"
    capabilities: frozenset[str] = ALL_CAPABILITIES
    ca: tuple[Path, ...] = ()
    client: tuple[tuple[Path, Path | None], ...] = ()
    skip_verify: bool = False
    mirror: bool = False
    headers: tuple[tuple[str, str], ...] = ()
    _context: list[ssl.SSLContext] = field(default_factory=list, compare=False, repr=False)

    @property
    def url(self) -> str:
        """``scheme://host/root`` (for messages and logs)."""
        return f"{self.scheme}://{self.host}{self.root}"

    def can(self, capability: str) -> bool:
        return capability in self.capabilities

    def query(self, registry: str) -> str:
        """``?ns=<registry>`` for a mirror (as containerd sends it), else ""."""
        if not self.mirror:
            return ""
        return "?ns=" + quote("docker.io" if registry == DOCKER_HUB else registry, safe=":[]")

    @property
    def custom_tls(self) -> bool:
        """True when this host needs its own TLS context (CAs, client cert, skip_verify)."""
        return bool(self.ca or self.client or self.skip_verify)

    def ssl_context(self, *, verify: bool = True) -> ssl.SSLContext:
        """The TLS context: system trust plus ``ca``, the first ``client`` pair; no verification
        with ``skip_verify`` or ``verify=False`` (an insecure registry).

        Built once per ``verify``; raises :class:`HostsConfigError` naming an unloadable file.
        """
        verify = verify and not self.skip_verify
        for ctx in self._context:
            if (ctx.verify_mode == ssl.CERT_REQUIRED) == verify:
                return ctx
        ctx = ssl.create_default_context()
        for path in self.ca:
            try:
                ctx.load_verify_locations(cafile=str(path))
            except (OSError, ssl.SSLError, ValueError) as exc:
                raise HostsConfigError(
                    f"{self.host}: CA file {path} cannot be loaded: {_reason(exc)}"
                ) from None
        if self.client:
            cert, key = self.client[0]
            try:
                # An encrypted key fails here instead of prompting on the terminal.
                ctx.load_cert_chain(str(cert), str(key) if key else None, password="")
            except (OSError, ssl.SSLError, ValueError) as exc:
                raise HostsConfigError(
                    f"{self.host}: client certificate {cert} cannot be loaded: {_reason(exc)}"
                ) from None
        if not verify:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        self._context.append(ctx)
        return ctx


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return getattr(exc, "reason", None) or type(exc).__name__


@dataclass(frozen=True)
class RegistryHosts:
    """Where to pull ``registry`` from: ``endpoints`` (mirrors in order, then the server)."""

    registry: str
    endpoints: tuple[Endpoint, ...]
    source: Path | None = None

    def for_capability(self, capability: str) -> tuple[Endpoint, ...]:
        """The endpoints that may be used for ``capability`` ("pull" or "resolve")."""
        return tuple(e for e in self.endpoints if e.can(capability))


def default_hosts(registry: str) -> RegistryHosts:
    """Without configuration: the registry itself over HTTPS."""
    return RegistryHosts(registry, (Endpoint("https", registry),))


def host_dirs(registry: str) -> list[str]:
    """Directory names to look for ``registry``, in containerd's order, then ``_default``."""
    names: list[str] = []
    host = registry.lower()
    if host == DOCKER_HUB:
        names += ["docker.io", DOCKER_HUB, "registry-1.docker.io"]
    elif ":" in host and not host.endswith("]"):
        name, port = host.rsplit(":", 1)
        names += [f"{name}_{port}_", host]
    else:
        names.append(host)
    return [*names, DEFAULT_DIR]


def load_hosts(config_dir: Path | None, registry: str) -> RegistryHosts:
    """The hosts for ``registry`` from ``config_dir`` (None: no configuration)."""
    if config_dir is None:
        return default_hosts(registry)
    for name in host_dirs(registry):
        directory = config_dir / name
        if "/" in name or name in (".", "..") or not directory.is_dir():
            continue
        path = directory / HOSTS_FILE
        if path.is_file():
            return parse_hosts_file(path, registry)
        if name != DEFAULT_DIR:
            return _docker_certs_dir(directory, registry)
    return default_hosts(registry)


def parse_hosts_file(path: Path, registry: str) -> RegistryHosts:
    """Read one ``hosts.toml`` for ``registry``; :class:`HostsConfigError` names the file."""
    try:
        with path.open("rb") as handle:
            raw = handle.read(MAX_HOSTS_FILE + 1)
    except OSError as exc:
        raise HostsConfigError(f"{path}: cannot be read: {exc.strerror}") from None
    if len(raw) > MAX_HOSTS_FILE:
        raise HostsConfigError(f"{path}: larger than {MAX_HOSTS_FILE} bytes")
    try:
        doc = tomllib.loads(raw.decode())
    except UnicodeDecodeError:
        raise HostsConfigError(f"{path}: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise HostsConfigError(f"{path}: not valid TOML: {exc}") from None
    try:
        return _parse(doc, registry, path.parent, path)
    except HostsConfigError as exc:
        raise HostsConfigError(f"{path}: {exc}") from None


def _parse(doc: dict[str, Any], registry: str, base: Path, source: Path) -> RegistryHosts:
    mirrors: list[Endpoint] = []
    hosts = doc.get("host", {})
    if not isinstance(hosts, dict):
        raise HostsConfigError("'host' must be a table of [host.\"https://...\"] entries")
    for url, table in hosts.items():
        if not isinstance(table, dict):
            raise HostsConfigError(f"host {url!r} must be a table")
        mirrors.append(_endpoint(url, table, base, mirror=True))
    server = doc.get("server")
    if server is None:
        upstream = "https://" + registry
    elif isinstance(server, str) and server.strip():
        upstream = server.strip()
    else:
        raise HostsConfigError("'server' must be a URL string")
    endpoints = [*mirrors, _endpoint(upstream, doc, base, mirror=False, server=True)]
    return RegistryHosts(registry, tuple(endpoints), source)


def _endpoint(
    url: str, table: dict[str, Any], base: Path, *, mirror: bool, server: bool = False
) -> Endpoint:
    what = "server" if server else f"host {url!r}"
    if "://" not in url:
        url = "https://" + url
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        raise HostsConfigError(f"{what} is not a valid URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise HostsConfigError(f"{what} must be an http:// or https:// URL with a host")
    if parts.username or parts.password or parts.query or parts.fragment:
        raise HostsConfigError(f"{what} must not carry credentials, a query or a fragment")
    host = parts.netloc.lower()
    if host == "docker.io":  # containerd's spelling of Docker Hub's API host
        host = DOCKER_HUB
    override = _bool(table, "override_path", what)
    root = parts.path.rstrip("/")
    if not override and not root.endswith("/v2"):
        root = f"{root}/v2"
    capabilities = table.get("capabilities", sorted(ALL_CAPABILITIES))
    if not isinstance(capabilities, list) or not all(isinstance(c, str) for c in capabilities):
        raise HostsConfigError(f"{what}: 'capabilities' must be a list of strings")
    unknown = set(capabilities) - ALL_CAPABILITIES
    if unknown:
        raise HostsConfigError(
            f"{what}: unknown capabilities {sorted(unknown)} (pull, resolve, push)"
        )
    return Endpoint(
        scheme=parts.scheme,
        host=host,
        root=root,
        capabilities=frozenset(capabilities),
        ca=tuple(_paths(table.get("ca"), base, f"{what}: 'ca'")),
        client=tuple(_clients(table.get("client"), base, what)),
        skip_verify=_bool(table, "skip_verify", what),
        mirror=mirror,
        headers=tuple(_headers(table.get("header"), what)),
    )


def _bool(table: dict[str, Any], key: str, what: str) -> bool:
    value = table.get(key, False)
    if not isinstance(value, bool):
        raise HostsConfigError(f"{what}: {key!r} must be true or false")
    return value


def _path(value: str, base: Path) -> Path:
    path = Path(os.path.expanduser(value))
    return path if path.is_absolute() else base / path


def _paths(value: object, base: Path, what: str) -> list[Path]:
    if value is None:
        return []
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(v, str) and v for v in items):
        raise HostsConfigError(f"{what} must be a path or a list of paths")
    return [_path(v, base) for v in items]


def _clients(value: object, base: Path, what: str) -> list[tuple[Path, Path | None]]:
    """``"a.pem"``, ``["a.pem", ...]`` or ``[["cert", "key"], ...]`` (key "" = in the cert)."""
    if value is None:
        return []
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list):
        raise HostsConfigError(f"{what}: 'client' must be a path or a list")
    out: list[tuple[Path, Path | None]] = []
    for item in items:
        if isinstance(item, str) and item:
            out.append((_path(item, base), None))
        elif (
            isinstance(item, list)
            and len(item) == 2
            and all(isinstance(v, str) for v in item)
            and item[0]
        ):
            out.append((_path(item[0], base), _path(item[1], base) if item[1] else None))
        else:
            raise HostsConfigError(
                f"{what}: a 'client' entry must be a path or a [certificate, key] pair"
            )
    return out


def _headers(value: object, what: str) -> list[tuple[str, str]]:
    if value is None:
        return []
    if not isinstance(value, dict):
        raise HostsConfigError(f"{what}: 'header' must be a table")
    out: list[tuple[str, str]] = []
    for name, raw in value.items():
        values = [raw] if isinstance(raw, str) else raw
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise HostsConfigError(f"{what}: header {name!r} must be a string or a list")
        if name.lower() in ("authorization", "host"):
            raise HostsConfigError(f"{what}: header {name!r} may not be set here")
        out += [(name, v) for v in values]
    return out


def _docker_certs_dir(directory: Path, registry: str) -> RegistryHosts:
    """Docker's ``certs.d`` files: ``*.crt`` CAs, ``<name>.cert`` + ``<name>.key`` clients."""
    files = sorted(p for p in directory.iterdir() if p.is_file())
    cas = tuple(p for p in files if p.suffix == ".crt")
    clients = []
    for cert in (p for p in files if p.suffix == ".cert"):
        key = cert.with_suffix(".key")
        if not key.is_file():
            raise HostsConfigError(f"{directory}: {cert.name} has no matching {key.name}")
        clients.append((cert, key))
    endpoint = Endpoint("https", registry, ca=cas, client=tuple(clients))
    log.debug(
        "registry certificates directory", extra={"registry": registry, "dir": str(directory)}
    )
    return RegistryHosts(registry, (endpoint,), directory)


class HostConnection(RegistryConnection):
    """A :class:`RegistryConnection` to one :class:`Endpoint` (a mirror or the server).

    Requests go to the endpoint's host and API root (``?ns=`` for a mirror), over its scheme,
    with its TLS context. ``ref`` stays the image's own reference (signature identities,
    scopes and messages use it). ``WASM_INSECURE_REGISTRIES`` applies to the endpoint's host.
    """

    def __init__(
        self,
        url: str,
        ref: OciReference,
        settings: FetchSettings,
        credentials: Credentials,
        timeout: float,
        backoff: Backoff | None = None,
        *,
        endpoint: Endpoint | None = None,
    ) -> None:
        endpoint = endpoint or Endpoint("https", ref.registry)
        self.client_withheld = bool(endpoint.client) and not settings.registry_client_certs
        if self.client_withheld:  # never the node's TLS identity for a pod's request
            endpoint = replace(endpoint, client=(), _context=[])
        self.endpoint = endpoint
        super().__init__(url, ref, settings, credentials, timeout, backoff)
        ep = self.endpoint
        if ep.headers:
            log.warning(
                "hosts.toml 'header' is not supported; the headers are not sent",
                extra={"registry": ref.registry, "host": ep.url},
            )
        if ep.host == ref.registry and ep.scheme == "https" and not ep.custom_tls:
            return  # the registry itself, as without configuration
        self.insecure = settings.is_insecure(ep.host)
        self.scheme = ep.scheme
        self.auth.allow_http_realm = self.insecure or ep.scheme == "http"

    def _make_client(self) -> httpx.AsyncClient:
        """The one client of this connection: the endpoint's TLS context, or the system trust
        store (none with ``WASM_INSECURE_REGISTRIES`` naming the endpoint's host)."""
        ep = self.endpoint
        insecure = self.settings.is_insecure(ep.host)
        if ep.custom_tls:
            return make_client(self.settings, verify=ep.ssl_context(verify=not insecure))
        return make_client(self.settings, insecure=insecure)

    def _api_url(self, path: str) -> str:
        ep = self.endpoint
        base = f"{self.scheme}://{ep.host}{ep.root}/{self.ref.repository}/{path}"
        return base + ep.query(self.ref.registry)

    async def retrying(self, attempt: Callable[[], Awaitable[T]]) -> T:
        """As :meth:`RegistryConnection.retrying`; a TLS alert the server sends after the
        handshake (a refused client certificate) surfaces as ``ssl.SSLError``: a clear error."""

        async def guarded() -> T:
            try:
                return await attempt()
            except ssl.SSLError as exc:
                raise self._tls_error(exc) from None

        return await super().retrying(guarded)

    def _tls_error(self, exc: BaseException) -> DownloadFailure:
        host = self.endpoint.host
        cause = describe_transport_error(exc)
        text = str(exc).upper()
        where = f"<registry config dir>/{self.ref.registry}/hosts.toml"
        if self.client_withheld:
            hint = (
                f"; the client certificate of {where} is not presented for pods' requests (the "
                "node's TLS identity would grant every pod access)"
            )
        elif "BAD_CERTIFICATE" in text or "CERTIFICATE_REQUIRED" in text:
            hint = (
                f"; the registry refused the client certificate (or wants one): 'client' in {where}"
            )
        elif not self.insecure:
            hint = (
                f"; trust its CA with 'ca' in {where}, or list {host} in WASM_INSECURE_REGISTRIES"
            )
        else:
            hint = ""
        return DownloadFailure(self.url, f"TLS connection to {host}: {cause}{hint}")
