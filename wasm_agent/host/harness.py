"""The pytest-facing API of the reference host, shaped like the plugin's life (like proxytest).

Start a plugin (load, link, start, ``proxy_on_vm_start``, ``proxy_on_configure``)::

    from wasm_agent.host.harness import start_plugin, FailurePolicy, LoadError

    host = start_plugin("plugin.wasm", plugin_config=b'{"x": 1}', vm_config=b"",
                        properties={"plugin_name": "p"}, failure_policy=FailurePolicy.FAIL_OPEN,
                        environment={"K": "v"})   # WASI environ (vm_config.environment_variables)
    # a module that cannot load raises LoadError(str = Envoy's message)

Drive an HTTP stream callback by callback, then inspect it::

    s = host.http_stream()
    s.send_request_headers({":method": "GET", ":path": "/", ":authority": "h"}, end_stream=False)
    s.send_request_body(b"part1", end_stream=False)   # chunked bodies: call repeatedly
    s.send_request_body(b"part2", end_stream=True)
    s.upstream.headers.to_dict(), bytes(s.upstream.body)   # what the upstream received
    s.send_response_headers({":status": "200"}, end_stream=True)
    s.client.headers, s.local_response, s.actions          # what the client received
    s.complete()                                           # on_log, on_done, on_delete

Each ``send_*`` returns the action name Envoy would apply (``CONTINUE``,
``STOP_ALL_ITERATION_AND_WATERMARK``, ``STOP_ITERATION_AND_BUFFER``..., or ``PAUSED``/``closed``/
``failed``). One call for a whole exchange (used by ``wasm-agent run`` and the conformance suite)::

    ex = host.exchange({":method": "GET", ":path": "/", ":authority": "h"}, b"",
                       {":status": "200"}, [b"hello", b""],   # bytes, or a list of chunks
                       callout_responder=lambda c: ({":status": "200"}, b"ok"))
    ex.upstream   # Message | None: headers/body/trailers the upstream received
    ex.client     # Message | None: what the client received (local replies included)
    ex.actions, ex.local_response, ex.logs, ex.failed, ex.to_dict()

TCP: ``c = host.tcp_connection(); c.send_downstream_data(b"x"); c.send_upstream_data(b"y");
c.close_downstream()``; see ``c.upstream_received``, ``c.downstream_received``, ``c.closed``.

Around the streams: ``host.tick()`` (``host.tick_period_ms``), ``host.http_callouts`` /
``host.respond_http_call(token, headers, body, trailers)`` / ``host.fail_http_call(token)`` (a
reset) / ``host.timeout_http_call(token)`` (Envoy's 504 "upstream request timeout"),
``host.grpc_calls`` / ``host.respond_grpc(token, message=..., close=0, ...)``, ``host.logs``
(``LogEntry.level/.envoy_level/.message/.raw``) / ``host.log_messages(min_level)`` /
``host.log_bytes()``, ``host.metrics``, ``host.set_property(path, value)``, ``host.shared_data`` /
``host.set_shared_data``, ``host.enqueue(queue, data)``, ``host.failed``, ``host.reloads``,
``host.configure(new_config)`` and ``host.shutdown()``. Limits: ``fuel=`` (instructions per
callback), ``deadline_ms=`` (wall clock per callback), ``memory_limit=``. Compiled modules are
cached (see ``compile.py``; ``$WASM_AGENT_HOST_CACHE``), so a suite compiles each module once.
Behaviour and what was checked against Envoy 1.40: ``docs/host.md``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from wasm_agent.host import exchange
from wasm_agent.host.abi import LogLevel
from wasm_agent.host.callouts import (
    GrpcCall,
    HttpCallout,
    deliver_grpc,
    deliver_http_response,
    fail_http_call,
)
from wasm_agent.host.clock import VirtualTime
from wasm_agent.host.envoylog import EnvoyLine
from wasm_agent.host.exchange import (
    Body,
    Exchange,
    GrpcResponder,
    Headers,
    Responder,
    Upstream,
    to_bytes,
)
from wasm_agent.host.failure import (
    DEFAULT_CONCURRENCY,
    DEFAULT_RELOAD_BACKOFF,
    FailurePolicy,
    Plugin,
)
from wasm_agent.host.http import HttpStream, Message
from wasm_agent.host.maps import HeaderMap
from wasm_agent.host.network import TcpConnection
from wasm_agent.host.properties import encode_value, normalize_path
from wasm_agent.host.shared import SharedState
from wasm_agent.host.startup import (
    CALLOUT_TIMEOUT_BODY,
    CALLOUT_TIMEOUT_HEADERS,
    connection_addresses,
    environment_variables,
)
from wasm_agent.host.vm import (
    DEFAULT_FUEL,
    DEFAULT_MEMORY_LIMIT,
    LoadError,
    LogEntry,
    VmOptions,
)

__all__ = [
    "Exchange",
    "FailurePolicy",
    "HostedPlugin",
    "LoadError",
    "LogLevel",
    "Message",
    "start_plugin",
]


def start_plugin(
    module: bytes | bytearray | str | Path,
    *,
    plugin_config: bytes | str = b"",
    vm_config: bytes | str = b"",
    properties: Mapping[str, Any] | None = None,
    failure_policy: FailurePolicy = FailurePolicy.FAIL_CLOSED,
    vm_id: str = "",
    root_id: str = "",
    plugin_name: str = "plugin",
    log_level: LogLevel = LogLevel.INFO,
    fuel: int | None = DEFAULT_FUEL,
    deadline_ms: float | None = None,
    memory_limit: int = DEFAULT_MEMORY_LIMIT,
    clock_ns: Callable[[], int] = time.time_ns,
    monotonic: Callable[[], float] = time.monotonic,
    reload_backoff: float = DEFAULT_RELOAD_BACKOFF,
    foreign_functions: Mapping[str, Callable[[bytes], Any]] | None = None,
    clusters: set[str] | None = None,
    shared: SharedState | None = None,
    cache_dir: str | Path | None = None,
    environment: Mapping[str, str] | None = None,
    host_env_keys: Sequence[str] = (),
    concurrency: int = DEFAULT_CONCURRENCY,
    trace_calls: bool | None = None,
    source_address: str | None = None,
    destination_address: str | None = None,
    upstream_address: str | None = None,
    cluster_name: str | None = None,
    route_name: str | None = None,
    virtual_host_name: str | None = None,
    route_timeout_ms: int | None = None,
    allowed_capabilities: Iterable[str] | None = None,
) -> HostedPlugin:
    """Load, start and configure a plugin from a path or bytes; raise LoadError on failure.

    ``environment`` and ``host_env_keys`` are Envoy's ``vm_config.environment_variables``
    (``key_values``, and names whose values come from this process's environment when set);
    the plugin reads them with WASI ``environ_get``. A key given twice is a ValueError with
    Envoy's configuration error.

    ``concurrency``: Envoy's ``--concurrency``; the host starts VMs as that Envoy does (main
    thread twice, one per worker: 4 for the default 2; 0 starts one VM only). Streams run on
    the first worker's VM. ``trace_calls``: Envoy's ``[host->vm]``/``[vm->host]`` trace lines
    (default: when ``log_level`` is TRACE).

    ``source_address``/``destination_address``/``upstream_address`` (``"ip:port"``),
    ``cluster_name``, ``route_name`` and ``virtual_host_name`` set what ``source.*``,
    ``destination.*``, ``upstream.*`` and ``xds.*`` answer, keeping Envoy's per-phase
    availability (``upstream.*`` only once the request went upstream), unlike raw
    ``properties=``. ``route_timeout_ms``: the route's timeout, which the front-end model's
    router sends as ``x-envoy-expected-rq-timeout-ms`` (Envoy's default 15000; 0: none).

    ``allowed_capabilities``: Envoy's ``capability_restriction_config`` (host functions and
    callbacks by name, e.g. ``proxy_log``, ``proxy_on_request_headers``): a call to another host
    function logs "Attempted call to restricted proxy-wasm capability: NAME" and gets
    INTERNAL_FAILURE; other callbacks are never called.
    """
    wasm = bytes(module) if isinstance(module, (bytes, bytearray)) else Path(module).read_bytes()
    clock = VirtualTime(clock_ns, monotonic)
    options = VmOptions(
        vm_config=to_bytes(vm_config),
        plugin_config=to_bytes(plugin_config),
        vm_id=vm_id,
        root_id=root_id,
        plugin_name=plugin_name,
        log_level=log_level,
        fuel=fuel,
        deadline_ms=deadline_ms,
        memory_limit=memory_limit,
        properties=dict(properties or {}),
        clock_ns=clock.clock_ns,
        foreign_functions=dict(foreign_functions or {}),
        clusters=frozenset(clusters) if clusters is not None else None,
        cache_dir=Path(cache_dir) if cache_dir else None,
        environment=environment_variables(environment or {}, host_env_keys, plugin_name),
        trace_calls=trace_calls,
        allowed_capabilities=(
            frozenset(allowed_capabilities) if allowed_capabilities is not None else None
        ),
    )
    plugin = Plugin(
        wasm, options, failure_policy, shared=shared, reload_backoff=reload_backoff,
        monotonic=clock.monotonic, concurrency=concurrency,
        connection=connection_addresses(source_address, destination_address, upstream_address),
    )  # fmt: skip
    if cluster_name is not None:
        plugin.cluster_name = cluster_name
    if route_name is not None:
        plugin.route_name = route_name
    if virtual_host_name is not None:
        plugin.virtual_host_name = virtual_host_name
    if route_timeout_ms is not None:
        plugin.route_timeout_ms = route_timeout_ms
    hosted = HostedPlugin(plugin, clock)
    clock.observe(plugin)
    return hosted


class HostedPlugin:
    """A running plugin (see the module docstring for the life cycle)."""

    def __init__(self, plugin: Plugin, clock: VirtualTime | None = None) -> None:
        self.plugin = plugin
        self.clock = clock or VirtualTime(plugin.options.clock_ns, plugin.monotonic)
        self.streams = 0  # HTTP streams started through exchange() (x-request-id numbers)

    # -- the VM ------------------------------------------------------------------------------

    @property
    def vm(self) -> Any:
        return self.plugin.vm

    @property
    def abi_version(self) -> str:
        return self.vm.abi_version.value

    @property
    def root_context_id(self) -> int:
        return self.vm.root.id

    @property
    def failed(self) -> str | None:
        """The trap message that failed the current VM, or None."""
        return self.vm.failed

    @property
    def reloads(self) -> int:
        return self.plugin.reloads

    def configure(self, plugin_config: bytes | str) -> None:
        """Re-run ``proxy_on_configure`` with a new configuration (LoadError on false)."""
        self.vm.options.plugin_config = to_bytes(plugin_config)
        self.vm.configure(to_bytes(plugin_config))

    def shutdown(self) -> None:
        """Envoy's shutdown: ``proxy_on_done``/``proxy_on_delete`` on every live root context."""
        self.plugin.shutdown()

    @property
    def vm_count(self) -> int:
        """VMs started, each with one root context (Envoy --concurrency 2: 4), reloads too."""
        return self.plugin.vm_count

    @property
    def root_context_count(self) -> int:
        """Root contexts created (one per VM started)."""
        return self.plugin.vm_count

    @property
    def vms(self) -> list[Any]:
        """The live VMs: each worker's, then the main thread's."""
        return self.plugin.vms

    def envoy_log_lines(self, min_level: str = "trace") -> list[EnvoyLine]:
        """Envoy's ``[wasm]`` log as Envoy writes it (plugin logs with Envoy's prefix, trap
        reports with the backtrace, lifecycle and call traces), each with its thread."""
        levels = ("trace", "debug", "info", "warning", "error", "critical")
        floor = levels.index(min_level)
        return [line for line in self.plugin.envoy_lines if levels.index(line.level) >= floor]

    def set_property(self, path: str, value: Any) -> None:
        """Set or override a property for every later call (dots or NULs separate names)."""
        self.vm.property_overrides[normalize_path(path)] = encode_value(value)

    # -- streams -----------------------------------------------------------------------------

    def http_stream(self, properties: Mapping[str, Any] | None = None) -> HttpStream:
        """A new HTTP stream (its context is created at the request headers)."""
        overrides = {normalize_path(k): encode_value(v) for k, v in (properties or {}).items()}
        return HttpStream(self.plugin, overrides)

    def tcp_connection(self, *, upstream_close_on_end: bool = True) -> TcpConnection:
        """A new downstream connection (``proxy_on_new_connection`` runs now).

        ``close_downstream(peer)``/``close_upstream(peer)`` close a side (``PeerType``: REMOTE
        by default, LOCAL, UNKNOWN); ``send_upstream_data(data, end_stream=True)`` also closes
        the upstream with peer UNKNOWN, as Envoy's tcp_proxy does, unless
        ``upstream_close_on_end=False``.
        """
        return TcpConnection(self.plugin, upstream_close_on_end=upstream_close_on_end)

    def exchange(
        self,
        request_headers: Headers,
        request_body: Body = b"",
        response_headers: Headers | None = None,
        response_body: Body = b"",
        *,
        request_trailers: Headers | None = None,
        response_trailers: Headers | None = None,
        chunk_size: int | None = None,
        complete: bool = True,
        callout_responder: Responder | None = None,
        upstream: Upstream | None = None,
        frontend: bool = True,
        grpc_responder: GrpcResponder | None = None,
    ) -> Exchange:
        """Request -> plugin -> upstream; response -> plugin -> client; then end the stream.

        Bodies are bytes (split by ``chunk_size`` if given) or lists of chunks. ``upstream``
        (instead of ``response_headers``/``response_body``/``response_trailers``) is called
        with what the upstream received (a ``Message``) and answers ``(headers, body)`` or
        ``(headers, body, trailers)``. ``callout_responder(callout)`` answers HTTP callouts as
        they are made (the same shapes, or None to leave one pending); ``grpc_responder(call)``
        answers gRPC calls (bytes: the unary reply; a dict: ``respond_grpc`` arguments).

        ``frontend`` (default on): deliver what Envoy's HCM, HTTP/1 codec and router deliver
        (pseudo-headers in Envoy's order, ``:scheme``, ``x-forwarded-proto``, ``x-request-id``,
        each body as a data frame plus an empty end-of-stream frame,
        ``x-envoy-upstream-service-time`` on the response) and give ``client`` as the codec
        writes it (``content-length: 0`` on an empty reply without one); see ``frontend.py``.
        """
        return exchange.run(
            self, request_headers, request_body, response_headers, response_body,
            request_trailers=request_trailers, response_trailers=response_trailers,
            chunk_size=chunk_size, complete=complete, callout_responder=callout_responder,
            upstream=upstream, frontend=frontend, grpc_responder=grpc_responder,
        )  # fmt: skip

    @property
    def notes(self) -> list[str]:
        """What the host itself noted (traps, runaway stops, reload failures): never plugin
        logs, never Envoy lines."""
        return [e.message for e in self.vm.logs if e.context_id < 0]

    def answer_callouts(self, responder: Responder | None) -> None:
        """Answer pending HTTP callouts with ``responder`` (see ``exchange``)."""
        exchange.answer_callouts(self, responder)

    def answer_grpc(self, responder: GrpcResponder | None) -> None:
        """Answer pending gRPC calls with ``responder`` (see ``exchange``)."""
        exchange.answer_grpc(self, responder)

    # -- timers, callouts, queues --------------------------------------------------------------

    def advance(self, seconds: float) -> int:
        """Let ``seconds`` pass: clocks move, due ticks and callout timeouts fire in time
        order (see ``clock.py``); returns how many fired."""
        return self.clock.advance(self.plugin, seconds)

    @property
    def tick_period_ms(self) -> int:
        return self.vm.root.tick_period_ms

    def tick(self) -> None:
        """Fire ``proxy_on_tick`` once on the root context."""
        root = self.vm.root
        self.vm.call_cb("proxy_on_tick", root, root.id)

    @property
    def http_callouts(self) -> list[HttpCallout]:
        return list(self.vm.callouts.http.values())

    def respond_http_call(
        self, token: int, headers: Headers | None = None, body: bytes | str = b"",
        trailers: Headers | None = None,
    ) -> None:  # fmt: skip
        deliver_http_response(
            self.vm, token, HeaderMap.coerce(headers or {":status": "200"}), to_bytes(body),
            HeaderMap.coerce(trailers),
        )  # fmt: skip

    def fail_http_call(self, token: int) -> None:
        fail_http_call(self.vm, token)

    def timeout_http_call(self, token: int) -> None:
        """The callout timed out: what Envoy's async client then delivers, its router's local
        reply (504, body ``upstream request timeout``) as a normal response."""
        deliver_http_response(
            self.vm, token, HeaderMap.coerce(list(CALLOUT_TIMEOUT_HEADERS)), CALLOUT_TIMEOUT_BODY,
            HeaderMap(),
        )  # fmt: skip

    @property
    def grpc_calls(self) -> list[GrpcCall]:
        return list(self.vm.callouts.grpc.values())

    def respond_grpc(
        self, token: int, *, initial_metadata: Headers | None = None, message: bytes | None = None,
        trailing_metadata: Headers | None = None, close: int | None = None,
        close_message: bytes | str = b"",
    ) -> None:  # fmt: skip
        deliver_grpc(
            self.vm, token,
            initial=HeaderMap.coerce(initial_metadata) if initial_metadata is not None else None,
            message=message,
            trailing=HeaderMap.coerce(trailing_metadata) if trailing_metadata is not None else None,
            close=close, close_message=to_bytes(close_message),
        )  # fmt: skip

    def enqueue(self, queue: str, data: bytes | str, vm_id: str | None = None) -> bool:
        """Enqueue onto a queue the plugin registered; False if it does not exist."""
        shared = self.plugin.shared
        token = shared.resolve_queue(self.vm.options.vm_id if vm_id is None else vm_id, queue)
        if token is None:
            return False
        shared.queues[token].items.append(to_bytes(data))
        root = self.vm.root
        self.vm.call_cb("proxy_on_queue_ready", root, root.id, token)
        return True

    def dequeue(self, queue: str) -> bytes | None:
        shared = self.plugin.shared
        token = shared.resolve_queue(self.vm.options.vm_id, queue)
        if token is None or not shared.queues[token].items:
            return None
        return shared.queues[token].items.popleft()

    # -- inspection ----------------------------------------------------------------------------

    @property
    def logs(self) -> list[LogEntry]:
        return self.vm.logs

    def log_messages(self, min_level: LogLevel = LogLevel.TRACE) -> list[str]:
        """Messages the plugin logged (host notes excluded) at ``min_level`` or above."""
        return [e.message for e in self.vm.logs if e.context_id >= 0 and e.level >= min_level]

    def log_bytes(self, min_level: LogLevel = LogLevel.TRACE) -> list[bytes]:
        """Like ``log_messages`` but the raw bytes the plugin logged."""
        return [e.raw for e in self.vm.logs if e.context_id >= 0 and e.level >= min_level]

    @property
    def metrics(self) -> dict[str, int | list[int]]:
        return self.vm.metrics.snapshot()

    @property
    def shared_data(self) -> dict[bytes, bytes]:
        table = self.plugin.shared.data.get(self.vm.options.vm_id, {})
        return {k: v for k, (v, _cas) in table.items()}

    def set_shared_data(self, key: bytes | str, value: bytes | str) -> None:
        self.plugin.shared.set(self.vm.options.vm_id, to_bytes(key), to_bytes(value), 0)
