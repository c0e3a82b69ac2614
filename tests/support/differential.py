"""The reference-host half of the differential suite: the same requests, the same upstreams.

``HostSide.request(...)`` drives one HTTP exchange through a plugin started with
``wasm_agent.host.harness.start_plugin`` the way Envoy's HCM presents it (pseudo-headers,
``:scheme``, ``x-forwarded-proto``, ``x-request-id``), answers callouts with
``callout_response`` and the upstream with ``upstream_response`` (the functions the real servers
in ``tests.support.envoy_wasm`` use), and returns the same ``Observation`` the Envoy half does.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from tests.support.envoy_wasm import (
    HOST,
    Observation,
    TcpObservation,
    WasmFilter,
    callout_response,
    normalize_headers,
    upstream_response,
)
from wasm_agent.host.harness import FailurePolicy, HostedPlugin, LogLevel, start_plugin

REQUEST_ID = "00000000-0000-4000-8000-000000000000"

# Wall time spent on the Envoy half, per part (printed by tests/conformance/conftest.py).
ENVOY_SECONDS: dict[str, float] = {}


@contextmanager
def envoy_clock(part: str) -> Iterator[None]:
    """Count the wall time of the block as Envoy-half time under ``part``."""
    start = time.monotonic()
    try:
        yield
    finally:
        ENVOY_SECONDS[part] = ENVOY_SECONDS.get(part, 0.0) + time.monotonic() - start


def assert_same(envoy: list[Observation], host: list[Observation]) -> None:
    """Equal observations, request by request, with a readable diff on failure."""
    problems = []
    for index, (mine, theirs) in enumerate(zip(envoy, host, strict=True)):
        diff = mine.diff(theirs)
        if diff:
            problems.append(f"request {index}:\n{diff}")
    assert not problems, "host differs from Envoy\n" + "\n".join(problems)


@dataclass(frozen=True)
class Request:
    """One client request of a scenario; ``wait`` seconds pass before it is sent."""

    path: str = "/"
    method: str = "GET"
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""
    wait: float = 0.0


class FakeClock:
    """Monotonic time the host sees: advanced by the scenario's waits, not by the wall clock."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def start_host(spec: WasmFilter, clock: FakeClock | None = None) -> HostedPlugin:
    """Start ``spec`` in the reference host as Envoy starts it (raises LoadError)."""
    policy = (
        FailurePolicy[spec.failure_policy] if spec.failure_policy else FailurePolicy.FAIL_CLOSED
    )
    extra: dict[str, Any] = {"monotonic": clock} if clock is not None else {}
    if spec.environment and "environment" in inspect.signature(start_plugin).parameters:
        extra["environment"] = dict(spec.environment)  # Envoy's vm_config.environment_variables
    return start_plugin(
        spec.module,
        plugin_config=spec.configuration or "",
        vm_config=spec.vm_configuration or "",
        failure_policy=policy,
        vm_id=spec.vm_id if spec.vm_id is not None else spec.name,
        root_id=spec.root_id,
        plugin_name=spec.name,
        log_level=LogLevel.INFO,
        clusters={"upstream", "callout", "tcp_upstream"},
        **extra,
    )


def _request_headers(request: Request) -> list[tuple[str, str]]:
    """The request headers as Envoy's HTTP/1.1 codec and HCM hand them to the filter."""
    names = {name.lower() for name, _ in request.headers}
    headers = [
        (":authority", HOST if "host" not in names else dict(request.headers)["host"]),
        (":path", request.path),
        (":method", request.method),
    ]
    headers += [(name.lower(), value) for name, value in request.headers if name.lower() != "host"]
    if request.body or request.method in ("POST", "PUT", "PATCH"):
        headers.append(("content-length", str(len(request.body))))
    headers += [(":scheme", "http"), ("x-forwarded-proto", "http"), ("x-request-id", REQUEST_ID)]
    return headers


def _answer_callouts(host: HostedPlugin) -> None:
    for _ in range(100):
        pending = [c for c in host.http_callouts if not c.answered]
        if not pending:
            return
        callout = pending[0]
        headers = callout.headers.to_dict()
        answer = callout_response(
            headers.get(":method", "GET"),
            headers.get(":path", "/"),
            normalize_headers(headers.items()),
            callout.body,
        )
        if answer is None:  # the callout server answers too late: the call times out
            timeout = getattr(host, "timeout_http_call", None)  # not in the harness (yet)
            (timeout or host.fail_http_call)(callout.token)
            continue
        status, response_headers, body = answer
        host.respond_http_call(
            callout.token,
            [(":status", str(status)), *response_headers, ("content-length", str(len(body)))],
            body,
        )


def _split_status(pairs: Sequence[tuple[str, str]]) -> tuple[int, list[tuple[str, str]]]:
    status = 0
    rest = []
    for name, value in pairs:
        if name == ":status":
            status = int(value)
        elif not name.startswith(":"):
            rest.append((name, value))
    return status, rest


def _upstream_headers(pairs: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    """What an HTTP/1.1 upstream sees: request line (kept as :method/:path) and host."""
    return [(name, value) for name, value in pairs if name != ":scheme"]


class HostSide:
    """One plugin in the reference host, observed like ``EnvoyWasm.request``."""

    def __init__(self, spec: WasmFilter, metrics: Sequence[str] = ()) -> None:
        self.spec = spec
        self.clock = FakeClock()
        self.host = start_host(spec, self.clock)
        self.metric_names = metrics

    def metrics(self) -> tuple[tuple[str, int], ...]:
        """Named like Envoy's /stats shows custom metrics (``wasmcustom.<name>``)."""
        snapshot = self.host.metrics
        values = []
        for name in self.metric_names:
            short = name.removeprefix("wasmcustom.")
            if short in snapshot and isinstance(snapshot[short], int):
                values.append((name, snapshot[short]))
        return tuple(values)

    def request(self, request: Request) -> Observation:
        self.clock.now += request.wait
        logs_before = len(self.host.logs)
        stream = self.host.http_stream()
        vm = stream.vm
        healthy = vm is not None and not vm.failed
        headers = _request_headers(request)
        stream.send_request_headers(headers, end_stream=not request.body)
        if request.body:
            stream.send_request_body(request.body, end_stream=True)
        _answer_callouts(self.host)
        # The upstream "saw" a request when all of it arrived (an aborted one is not recorded).
        complete = stream.upstream.headers is not None and stream.upstream.complete
        upstream = stream.upstream if complete else None
        if upstream is not None and not stream.closed:
            seen = upstream.headers.pairs()
            pseudo = dict(seen)
            status, response_headers, chunks = upstream_response(
                pseudo.get(":method", ""),
                pseudo.get(":path", ""),
                normalize_headers(seen),
                bytes(upstream.body),
            )
            length = sum(len(chunk) for chunk in chunks)
            # Envoy's router adds x-envoy-upstream-service-time before the filters see it.
            stream.send_response_headers(
                [
                    (":status", str(status)),
                    *response_headers,
                    ("content-length", str(length)),
                    ("x-envoy-upstream-service-time", "1"),
                ],
                end_stream=not chunks,
            )
            for index, chunk in enumerate(chunks):
                stream.send_response_body(chunk, end_stream=index == len(chunks) - 1)
            _answer_callouts(self.host)
        stream.complete()
        client = stream.client
        status, client_headers = _split_status(client.headers.pairs() if client.headers else [])
        logs = [
            (entry.envoy_level, entry.message)
            for entry in self.host.logs[logs_before:]
            if entry.context_id >= 0 and entry.level >= LogLevel.INFO
        ]
        return Observation(
            status=status,
            response_headers=normalize_headers(client_headers),
            response_body=bytes(client.body),
            upstream_headers=(
                normalize_headers(_upstream_headers(upstream.headers.pairs()))
                if upstream is not None
                else None
            ),
            upstream_body=bytes(upstream.body) if upstream is not None else None,
            logs=tuple(logs),
            metrics=self.metrics(),
            trap=vm.failed if healthy and vm is not None and vm.failed else None,
        )


def host_tcp(spec: WasmFilter, payloads: Sequence[bytes]) -> list[TcpObservation]:
    """One TCP connection per payload through ``spec`` in the host, upstream an echo (like
    ``TcpEcho``), observed like ``EnvoyWasm.tcp_exchange``."""
    host = start_host(spec)
    observed = []
    for payload in payloads:
        logs_before = len(host.logs)
        connection = host.tcp_connection()
        connection.send_downstream_data(payload)
        if connection.upstream_received:
            connection.send_upstream_data(bytes(connection.upstream_received))
        connection.close_downstream()
        logs = tuple(
            (entry.envoy_level, entry.message)
            for entry in host.logs[logs_before:]
            if entry.context_id >= 0 and entry.level >= LogLevel.INFO
        )
        observed.append(
            TcpObservation(
                bytes(connection.upstream_received), bytes(connection.downstream_received), logs
            )
        )
    return observed
