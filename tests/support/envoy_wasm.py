"""Real Envoy with Proxy-Wasm filters for the conformance suite, and what a request looked like.

- ``WasmFilter`` describes one plugin instance; ``http_bootstrap``/``EnvoyWasm`` put each on its
  own listener (listener -> HCM -> wasm filter -> router -> ``upstream`` cluster, or
  listener -> network wasm filter -> tcp_proxy -> ``tcp_upstream``), with a ``callout`` cluster for
  HTTP callouts. Each filter gets its own ``vm_id`` (default: its name) so a trap in one plugin
  never marks another listener's VM failed.
- ``Upstream``/``CalloutServer``/``TcpEcho`` are deterministic servers: what they answer is a pure
  function of what they received (``upstream_response``/``callout_response``), so the reference
  host can be given exactly the same answers.
- ``Observation`` is the one shape both halves of the differential suite produce.
"""

from __future__ import annotations

import difflib
import http.client
import re
import socket
import socketserver
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from tests.support.envoy import EnvoyProcess, envoy_binary

STRING_VALUE = "type.googleapis.com/google.protobuf.StringValue"
HOST = "conformance.test"
# The log file is flushed every 10 s by default; plugin log lines are observations.
FAST_LOG_FLUSH = ("--file-flush-interval-msec", "20", "--file-flush-min-size-kb", "1")

# Headers that say nothing about the plugin: added/recomputed by Envoy or the HTTP stack.
IGNORED_HEADERS = frozenset(
    {
        "date",
        "server",
        "content-length",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "x-request-id",
        "x-forwarded-proto",
        "x-envoy-expected-rq-timeout-ms",
        "x-envoy-upstream-service-time",
        "accept-encoding",
    }
)


# --------------------------------------------------------------------------- observations


Headers = tuple[tuple[str, str], ...]


def normalize_headers(headers: Iterable[tuple[str, str]]) -> Headers:
    """Lowercase names, drop ``IGNORED_HEADERS``, ``host`` -> ``:authority``, sort (stable)."""
    kept = []
    for name, value in headers:
        name = name.lower()
        if name == "host":
            name = ":authority"
        if name in IGNORED_HEADERS or name.startswith("x-envoy-"):
            continue
        kept.append((name, value))
    return tuple(sorted(kept, key=lambda pair: pair[0]))


@dataclass(frozen=True)
class Observation:
    """Everything a client, the upstream and an operator can see of one request."""

    status: int
    response_headers: Headers
    response_body: bytes
    upstream_headers: Headers | None  # None: the upstream never saw the request
    upstream_body: bytes | None
    logs: tuple[tuple[str, str], ...] = ()  # (level, message) of the plugin's log lines
    metrics: tuple[tuple[str, int], ...] = ()
    trap: str | None = None  # "Function: <callback> failed: <reason>" if the VM trapped now

    @property
    def local_reply(self) -> bool:
        return self.upstream_headers is None

    def diff(self, other: Observation) -> str:
        """Readable field-by-field differences (empty when equal); sequences line by line
        (``-`` Envoy only, ``+`` host only)."""
        lines = []
        for name in self.__dataclass_fields__:
            mine, theirs = getattr(self, name), getattr(other, name)
            if mine == theirs:
                continue
            if isinstance(mine, tuple) and isinstance(theirs, tuple):
                changed = difflib.ndiff([repr(x) for x in mine], [repr(x) for x in theirs])
                body = "\n".join(f"  {line}" for line in changed if line[:1] in "-+")
                lines.append(f"{name} (- envoy, + host):\n{body}")
            else:
                lines.append(f"{name}:\n  envoy: {mine!r}\n  host:  {theirs!r}")
        return "\n".join(lines)


@dataclass(frozen=True)
class TcpObservation:
    """One TCP connection: what the upstream received, what the client received, plugin logs."""

    upstream_received: bytes
    client_received: bytes
    logs: tuple[tuple[str, str], ...] = ()


# --------------------------------------------------------------------------- upstreams


def upstream_response(
    method: str, path: str, headers: Headers, body: bytes
) -> tuple[int, Headers, list[bytes]]:
    """What the HTTP upstream answers: status, headers, body chunks (sent with flushes).

    ``/status/<code>`` answers that status. The body is the request body when there is one,
    else a fixed text; ``/chunks`` sends it in three parts, so streamed body callbacks see more
    than one chunk. Headers include the ones the response-header plugins touch.
    """
    status = 200
    match = re.match(r"^/status/(\d{3})", path)
    if match:
        status = int(match.group(1))
    payload = body or b"upstream says hello to " + path.encode() + b"\n"
    if path.startswith("/chunks"):
        third = max(1, len(payload) // 3)
        chunks = [payload[:third], payload[third : 2 * third], payload[2 * third :]]
    else:
        chunks = [payload]
    response_headers: Headers = (
        ("content-type", "text/plain"),
        ("x-upstream", "1"),
        ("x-replace-resp", "original"),
        ("x-remove-resp", "gone"),
    )
    return status, response_headers, [chunk for chunk in chunks if chunk]


def callout_response(
    method: str, path: str, headers: Headers, body: bytes
) -> tuple[int, Headers, bytes] | None:
    """What the ``callout`` cluster answers an HTTP callout; None: not in time (``/slow``
    answers after ``SLOW_CALLOUT`` seconds, past any timeout the tests give the plugin)."""
    if path.startswith("/slow"):
        return None
    status = 503 if path.startswith("/fail") else 200
    return (
        status,
        (("x-callout", "yes"), ("content-type", "text/plain")),
        b"callout-ok " + path.encode(),
    )


SLOW_CALLOUT = 1.5


@dataclass
class Seen:
    method: str
    path: str
    headers: list[tuple[str, str]]
    body: bytes


class _RecordingHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _read_body(self) -> bytes | None:
        """The whole body, or None if the connection ended first (an aborted request)."""
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            data = b""
            while True:
                line = self.rfile.readline()
                if not line:
                    return None
                size = int(line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    return data
                chunk = self.rfile.read(size)
                if len(chunk) < size:
                    return None
                data += chunk
                self.rfile.readline()
        length = int(self.headers.get("content-length") or 0)
        data = self.rfile.read(length) if length else b""
        return data if len(data) == length else None

    def _handle(self) -> None:
        try:
            body = self._read_body()
        except OSError:
            body = None
        if body is None:  # Envoy gave up on the request: the upstream never got all of it
            self.close_connection = True
            return
        seen = Seen(self.command, self.path, list(self.headers.items()), body)
        self.server.seen.append(seen)  # type: ignore[attr-defined]
        normalized = normalize_headers(seen.headers)
        if self.server.kind == "callout":  # type: ignore[attr-defined]
            answer = callout_response(self.command, self.path, normalized, body)
            if answer is None:
                time.sleep(SLOW_CALLOUT)
                answer = (200, (), b"too late")
            status, headers, payload = answer
            chunks = [payload]
        else:
            status, headers, chunks = upstream_response(self.command, self.path, normalized, body)
        # No Server/Date headers: the response is exactly what the functions above say.
        self.send_response_only(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("content-length", str(sum(len(chunk) for chunk in chunks)))
        self.end_headers()
        try:
            for index, chunk in enumerate(chunks):
                self.wfile.write(chunk)
                self.wfile.flush()
                if index + 1 < len(chunks):
                    time.sleep(0.02)
        except (BrokenPipeError, ConnectionResetError):  # Envoy reset the stream: fine
            self.close_connection = True

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _handle

    def log_message(self, *args: Any) -> None:
        pass


class Upstream:
    """A recording HTTP server: ``kind`` "upstream" (``upstream_response``) or "callout"."""

    def __init__(self, kind: str = "upstream") -> None:
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _RecordingHandler)
        self.server.daemon_threads = True
        self.server.seen = []  # type: ignore[attr-defined]
        self.server.kind = kind  # type: ignore[attr-defined]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    @property
    def seen(self) -> list[Seen]:
        return self.server.seen  # type: ignore[attr-defined]

    def __enter__(self) -> Upstream:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


class _TcpEchoHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while True:
            data = self.request.recv(65536)
            if not data:
                return
            self.server.received.append(data)  # type: ignore[attr-defined]
            self.request.sendall(data)


class TcpEcho:
    """A TCP upstream that sends back every byte it receives and records them."""

    def __init__(self) -> None:
        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _TcpEchoHandler)
        self.server.daemon_threads = True
        self.server.received = []  # type: ignore[attr-defined]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    @property
    def received(self) -> bytes:
        return b"".join(self.server.received)  # type: ignore[attr-defined]

    def clear(self) -> None:
        self.server.received.clear()  # type: ignore[attr-defined]

    def __enter__(self) -> TcpEcho:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


# --------------------------------------------------------------------------- bootstrap


@dataclass(frozen=True)
class WasmFilter:
    """One plugin instance on its own listener."""

    name: str
    module: Path
    root_id: str
    configuration: str | None = None  # plugin configuration (StringValue); None: unset
    vm_configuration: str | None = None
    vm_id: str | None = None  # default: name
    failure_policy: str | None = None  # FAIL_CLOSED, FAIL_OPEN, FAIL_RELOAD; None: unset
    network: bool = False
    environment: tuple[tuple[str, str], ...] = ()  # vm_config.environment_variables.key_values


def _string_value(value: str) -> dict[str, Any]:
    return {"@type": STRING_VALUE, "value": value}


def plugin_config(spec: WasmFilter) -> dict[str, Any]:
    """``envoy.extensions.wasm.v3.PluginConfig`` for ``spec``."""
    vm_config: dict[str, Any] = {
        "vm_id": spec.vm_id if spec.vm_id is not None else spec.name,
        "runtime": "envoy.wasm.runtime.v8",
        "code": {"local": {"filename": str(spec.module)}},
    }
    if spec.vm_configuration is not None:
        vm_config["configuration"] = _string_value(spec.vm_configuration)
    if spec.environment:
        vm_config["environment_variables"] = {"key_values": dict(spec.environment)}
    config: dict[str, Any] = {"name": spec.name, "root_id": spec.root_id, "vm_config": vm_config}
    if spec.configuration is not None:
        config["configuration"] = _string_value(spec.configuration)
    if spec.failure_policy is not None:
        config["failure_policy"] = spec.failure_policy
    return config


def _address(port: int = 0) -> dict[str, Any]:
    return {"socket_address": {"address": "127.0.0.1", "port_value": port}}


def _cluster(name: str, port: int) -> dict[str, Any]:
    return {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "2s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": _address(port)}}]}],
        },
    }


def http_listener(spec: WasmFilter, cluster: str = "upstream") -> dict[str, Any]:
    hcm = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network."
        "http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": spec.name,
        "route_config": {
            "name": f"route_{spec.name}",
            "virtual_hosts": [
                {
                    "name": "all",
                    "domains": ["*"],
                    "routes": [
                        {"match": {"prefix": "/"}, "route": {"cluster": cluster, "timeout": "10s"}}
                    ],
                }
            ],
        },
        "http_filters": [
            {
                "name": "envoy.filters.http.wasm",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
                    "config": plugin_config(spec),
                },
            },
            {
                "name": "envoy.filters.http.router",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
                },
            },
        ],
    }
    return {
        "name": spec.name,
        "address": _address(),
        "filter_chains": [
            {
                "filters": [
                    {"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}
                ]
            }
        ],
    }


def tcp_listener(spec: WasmFilter, cluster: str = "tcp_upstream") -> dict[str, Any]:
    return {
        "name": spec.name,
        "address": _address(),
        "filter_chains": [
            {
                "filters": [
                    {
                        "name": "envoy.filters.network.wasm",
                        "typed_config": {
                            "@type": "type.googleapis.com/"
                            "envoy.extensions.filters.network.wasm.v3.Wasm",
                            "config": plugin_config(spec),
                        },
                    },
                    {
                        "name": "envoy.filters.network.tcp_proxy",
                        "typed_config": {
                            "@type": "type.googleapis.com/"
                            "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
                            "stat_prefix": spec.name,
                            "cluster": cluster,
                        },
                    },
                ]
            }
        ],
    }


def bootstrap(
    filters: Sequence[WasmFilter],
    upstream_port: int,
    callout_port: int,
    tcp_port: int | None = None,
) -> dict[str, Any]:
    """Static bootstrap: one listener per filter; clusters upstream, callout, tcp_upstream."""
    clusters = [_cluster("upstream", upstream_port), _cluster("callout", callout_port)]
    if tcp_port is not None:
        clusters.append(_cluster("tcp_upstream", tcp_port))
    listeners = [tcp_listener(spec) if spec.network else http_listener(spec) for spec in filters]
    return {"static_resources": {"listeners": listeners, "clusters": clusters}}


# --------------------------------------------------------------------------- Envoy


_TRAP_LINE = re.compile(r"\]\[wasm\] \[[^\]]*\] (Function: \w+ failed: .*)$")
_LOG_LINE = re.compile(
    r"^\[[^\]]*\]\[[^\]]*\]\[(?P<level>\w+)\]\[wasm\] \[[^\]]*\] "
    r"wasm log (?P<prefix>[^:]*): (?P<message>.*)$"
)


class EnvoyWasm:
    """One Envoy serving ``filters`` (one listener each), with its upstreams.

    Start it with ``with EnvoyWasm(filters, workdir) as envoy:``; ``request(name, ...)`` sends one
    HTTP request to the listener of filter ``name`` and returns its ``Observation``.
    """

    def __init__(self, filters: Sequence[WasmFilter], workdir: Path, log_level: str = "info"):
        self.filters = {spec.name: spec for spec in filters}
        self.workdir = workdir
        self.log_level = log_level
        self.upstream = Upstream("upstream")
        self.callout = Upstream("callout")
        self.tcp = TcpEcho()
        self.envoy: EnvoyProcess | None = None
        self.ports: dict[str, int] = {}

    def __enter__(self) -> EnvoyWasm:
        self.upstream.__enter__()
        self.callout.__enter__()
        self.tcp.__enter__()
        try:
            config = bootstrap(
                list(self.filters.values()), self.upstream.port, self.callout.port, self.tcp.port
            )
            self.envoy = EnvoyProcess(
                config, self.workdir, log_level=self.log_level, extra_args=FAST_LOG_FLUSH
            ).start()
            for name in self.filters:
                self.ports[name] = self.envoy.listener_port(name)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        if self.envoy is not None:
            self.envoy.stop()
        self.tcp.__exit__()
        self.callout.__exit__()
        self.upstream.__exit__()

    # -- observing

    def plugin_logs(
        self, name: str, since: int = 0, context: str | None = None
    ) -> list[tuple[str, str]]:
        """(level, message) of filter ``name``'s VM log lines after log offset ``since``.

        ``context``: "root" keeps root-context lines (VM start, configure: Envoy prefixes them
        with ``<root_id> <vm_id>``), "stream" keeps stream lines (``<name> <root_id> <vm_id>``).
        """
        assert self.envoy is not None
        spec = self.filters[name]
        vm_id = spec.vm_id if spec.vm_id is not None else spec.name
        lines = []
        for line in self.envoy.logs()[since:].splitlines():
            match = _LOG_LINE.match(line)
            if not match:
                continue
            prefix = match["prefix"].split(" ")
            if prefix[-1] != vm_id:
                continue
            if (context == "root" and len(prefix) != 2) or (
                context == "stream" and len(prefix) != 3
            ):
                continue
            lines.append((match["level"], match["message"]))
        return lines

    def traps(self, since: int = 0) -> list[str]:
        """Trap messages Envoy logged after log offset ``since`` (they name no plugin)."""
        assert self.envoy is not None
        lines = self.envoy.logs()[since:].splitlines()
        return [m.group(1) for m in map(_TRAP_LINE.search, lines) if m]

    def quiesce(self, settle: float, limit: float = 2.0) -> None:
        """Wait ``settle`` seconds, then until the log stops growing (Envoy flushes every
        20 ms here), at most ``limit`` seconds in all."""
        deadline = time.monotonic() + limit
        time.sleep(settle)
        assert self.envoy is not None
        size = self.envoy.log_path.stat().st_size if self.envoy.log_path.exists() else 0
        while time.monotonic() < deadline:
            time.sleep(0.05)
            now = self.envoy.log_path.stat().st_size if self.envoy.log_path.exists() else 0
            if now == size:
                return
            size = now

    def log_offset(self) -> int:
        assert self.envoy is not None
        return len(self.envoy.logs())

    def metrics(self, names: Sequence[str]) -> tuple[tuple[str, int], ...]:
        """Values of the named stats (as /stats shows them); absent ones are left out."""
        assert self.envoy is not None
        stats = self.envoy.stats()
        return tuple((name, stats[name]) for name in names if name in stats)

    def request(
        self,
        name: str,
        path: str = "/",
        *,
        method: str = "GET",
        headers: Sequence[tuple[str, str]] = (),
        body: bytes = b"",
        metrics: Sequence[str] = (),
        settle: float = 0.3,
    ) -> Observation:
        """Send one request to filter ``name``'s listener and observe it."""
        offset = self.log_offset()
        self.upstream.seen.clear()
        status, response_headers, response_body = send_http(
            self.ports[name], method, path, headers, body
        )
        self.quiesce(settle)  # let Envoy write the stream's log lines (on_log, on_done)
        seen = list(self.upstream.seen)
        return Observation(
            status=status,
            response_headers=normalize_headers(response_headers),
            response_body=response_body,
            upstream_headers=(
                normalize_headers(
                    [(":method", seen[0].method), (":path", seen[0].path), *seen[0].headers]
                )
                if seen
                else None
            ),
            upstream_body=seen[0].body if seen else None,
            logs=tuple(self.plugin_logs(name, offset)),
            metrics=self.metrics(metrics),
            trap=next(iter(self.traps(offset)), None),
        )

    def tcp_exchange(self, name: str, data: bytes, settle: float = 0.1) -> TcpObservation:
        """Send ``data`` on a new connection to ``name``, read until the echo is back or the
        connection closes, and observe it."""
        offset = self.log_offset()
        self.tcp.clear()
        received = b""
        with socket.create_connection(("127.0.0.1", self.ports[name]), timeout=5) as sock:
            sock.sendall(data)
            deadline = time.monotonic() + 5
            while len(received) < len(data) and time.monotonic() < deadline:
                try:
                    chunk = sock.recv(65536)
                except ConnectionResetError:
                    break
                if not chunk:
                    break
                received += chunk
        self.quiesce(settle)
        return TcpObservation(
            self.tcp.received, received, tuple(self.plugin_logs(name, offset, context="stream"))
        )


def send_http(
    port: int, method: str, path: str, headers: Sequence[tuple[str, str]], body: bytes
) -> tuple[int, list[tuple[str, str]], bytes]:
    """One HTTP/1.1 request on a fresh connection; ``host`` defaults to ``HOST``."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        names = {name.lower() for name, _ in headers}
        if "host" not in names:
            connection.putheader("host", HOST)
        for name, value in headers:
            connection.putheader(name, value)
        if body or method in ("POST", "PUT", "PATCH"):
            connection.putheader("content-length", str(len(body)))
        connection.endheaders(body or None)
        response = connection.getresponse()
        return response.status, response.getheaders(), response.read()
    finally:
        connection.close()


def start_failure(spec: WasmFilter, workdir: Path, timeout: float = 20.0) -> str:
    """Start Envoy with only ``spec`` and expect it to refuse the config: return its log.

    Raises AssertionError if Envoy comes up serving the listener instead.
    """
    with Upstream() as upstream:
        config = bootstrap([spec], upstream.port, upstream.port)
        envoy = EnvoyProcess(config, workdir, extra_args=FAST_LOG_FLUSH)
        try:
            envoy.start(timeout=timeout)
        except RuntimeError as error:
            return envoy.logs() or str(error)
        try:
            raise AssertionError(f"envoy accepted {spec.name}:\n{envoy.logs()[-3000:]}")
        finally:
            envoy.stop()


def envoy_available() -> bool:
    try:
        envoy_binary()
    except RuntimeError:
        return False
    return True


@dataclass
class Timer:
    """Accumulates the wall time the Envoy half of the suite spends (reported at the end)."""

    total: float = 0.0
    parts: dict[str, float] = field(default_factory=dict)
