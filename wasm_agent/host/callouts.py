"""HTTP callouts and gRPC calls/streams: recorded for the test, answered by the test.

Calls belong to the root context (Envoy routes them through ``root_context()``), so responses
arrive on the root context id; SDKs use ``proxy_set_effective_context`` to get back to a stream.
Tokens carry their kind in the low two bits like cpp-host's callout ids (checked against Envoy
1.40): HTTP calls 4, 8, ...; gRPC calls 5, 9, ...; gRPC streams 6, 10, ... ``proxy_http_call``
needs ``:path``, ``:method`` and ``:authority`` and a known cluster (BAD_ARGUMENT otherwise); a
gRPC service that is not a serialized ``GrpcService`` message is PARSE_FAILURE.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from envoy.config.core.v3 import grpc_service_pb2

from wasm_agent.host.abi import Status
from wasm_agent.host.hostfn import Current, VmLike, host
from wasm_agent.host.maps import HeaderMap, deserialize_pairs

_M = 0xFFFFFFFF
HTTP, GRPC_CALL, GRPC_STREAM = 0, 1, 2  # callout kind = token & 3


@dataclass
class HttpCallout:
    token: int
    cluster: str
    headers: HeaderMap
    body: bytes
    trailers: HeaderMap
    timeout_ms: int
    context_id: int  # the context that made the call
    answered: bool = False


@dataclass
class GrpcCall:
    token: int
    service: bytes
    service_name: str
    method: str
    metadata: HeaderMap
    messages: list[bytes] = field(default_factory=list)  # request / messages sent
    stream: bool = False
    timeout_ms: int = 0
    closed_locally: bool = False
    cancelled: bool = False
    done: bool = False


class Callouts:
    """Outstanding and past callouts of one VM."""

    def __init__(self) -> None:
        self.http: dict[int, HttpCallout] = {}
        self.grpc: dict[int, GrpcCall] = {}
        self._next = {HTTP: HTTP, GRPC_CALL: GRPC_CALL, GRPC_STREAM: GRPC_STREAM}

    def next_http_token(self) -> int:
        return self._advance(HTTP)

    def next_grpc_token(self, stream: bool) -> int:
        return self._advance(GRPC_STREAM if stream else GRPC_CALL)

    def _advance(self, kind: int) -> int:
        self._next[kind] += 4
        return self._next[kind] & 0xFFFFFFFF


def _grpc_service_ok(raw: bytes) -> bool:
    try:
        grpc_service_pb2.GrpcService().ParseFromString(raw)
    except Exception:
        return False
    return True


@host("proxy_http_call", "iiiiiiiiii")
def http_call(
    uri_ptr: int, uri_size: int, hdr_ptr: int, hdr_size: int, body_ptr: int, body_size: int,
    trl_ptr: int, trl_size: int, timeout: int, token_p: int,
) -> int:  # fmt: skip
    vm = Current.vm
    mem = vm.memory
    uri, body = mem.read(uri_ptr, uri_size), mem.read(body_ptr, body_size)
    hdrs, trls = mem.read(hdr_ptr, hdr_size), mem.read(trl_ptr, trl_size)
    if uri is None or body is None or hdrs is None or trls is None:
        return Status.INVALID_MEMORY_ACCESS
    if not mem.set_u32(token_p, 0):
        return Status.INVALID_MEMORY_ACCESS
    if timeout & 0x80000000:
        return Status.BAD_ARGUMENT
    cluster = uri.decode("latin-1")
    clusters = vm.options.clusters
    if clusters is not None and cluster not in clusters:
        return Status.BAD_ARGUMENT
    headers = HeaderMap(deserialize_pairs(hdrs))
    if any(headers.get(k) is None for k in (b":path", b":method", b":authority")):
        return Status.BAD_ARGUMENT
    if body:
        headers.replace(b"content-length", str(len(body)).encode())
    token = vm.callouts.next_http_token()
    ctx = vm.context()
    vm.callouts.http[token] = HttpCallout(
        token, cluster, headers, body, HeaderMap(deserialize_pairs(trls)), timeout, ctx.id
    )
    mem.set_u32(token_p, token)
    return Status.OK


def _text(raw: bytes) -> str:
    """A service or method name; Envoy takes any bytes, so never fail on bad UTF-8."""
    return raw.decode("utf-8", "replace")


def _grpc_common(sp: int, ss: int, np_: int, ns: int, mp: int, ms: int, ip: int, is_: int):
    mem = Current.vm.memory
    parts = [mem.read(sp, ss), mem.read(np_, ns), mem.read(mp, ms), mem.read(ip, is_)]
    return None if any(p is None for p in parts) else parts


@host("proxy_grpc_call", "iiiiiiiiiiii")
def grpc_call(
    sp: int, ss: int, np_: int, ns: int, mp: int, ms: int, ip: int, is_: int,
    req_ptr: int, req_size: int, timeout: int, token_p: int,
) -> int:  # fmt: skip
    vm = Current.vm
    parts = _grpc_common(sp, ss, np_, ns, mp, ms, ip, is_)
    request = vm.memory.read(req_ptr, req_size)
    if parts is None or request is None:
        return Status.INVALID_MEMORY_ACCESS
    service, name, method, metadata = parts
    if not _grpc_service_ok(service):
        return Status.PARSE_FAILURE
    token = vm.callouts.next_grpc_token(stream=False)
    call = GrpcCall(
        token, service, _text(name), _text(method), HeaderMap(deserialize_pairs(metadata))
    )
    call.messages.append(request)
    call.timeout_ms = timeout & _M
    vm.callouts.grpc[token] = call
    return Status.OK if vm.memory.set_u32(token_p, token) else Status.INVALID_MEMORY_ACCESS


@host("proxy_grpc_stream", "iiiiiiiii")
def grpc_stream(
    sp: int, ss: int, np_: int, ns: int, mp: int, ms: int, ip: int, is_: int, token_p: int
) -> int:
    vm = Current.vm
    parts = _grpc_common(sp, ss, np_, ns, mp, ms, ip, is_)
    if parts is None:
        return Status.INVALID_MEMORY_ACCESS
    service, name, method, metadata = parts
    if not _grpc_service_ok(service):
        return Status.PARSE_FAILURE
    token = vm.callouts.next_grpc_token(stream=True)
    vm.callouts.grpc[token] = GrpcCall(
        token,
        service,
        _text(name),
        _text(method),
        HeaderMap(deserialize_pairs(metadata)),
        stream=True,
    )
    return Status.OK if vm.memory.set_u32(token_p, token) else Status.INVALID_MEMORY_ACCESS


@host("proxy_grpc_send", "iiii")
def grpc_send(token: int, msg_ptr: int, msg_size: int, end_stream: int) -> int:
    vm = Current.vm
    message = vm.memory.read(msg_ptr, msg_size)
    if message is None:
        return Status.INVALID_MEMORY_ACCESS
    token &= _M
    if token & 3 != GRPC_STREAM:
        return Status.BAD_ARGUMENT
    call = vm.callouts.grpc.get(token)
    if call is None or call.done:
        return Status.NOT_FOUND
    call.messages.append(message)
    if end_stream:
        call.closed_locally = True
    return Status.OK


def _finish(token: int, cancel: bool) -> int:
    token &= _M
    if token & 3 not in (GRPC_CALL, GRPC_STREAM):
        return Status.BAD_ARGUMENT
    call = Current.vm.callouts.grpc.get(token)
    if call is None or call.done:
        return Status.NOT_FOUND
    if cancel or not call.stream:
        call.cancelled = cancel or call.cancelled
        call.done = True
    call.closed_locally = True
    return Status.OK


@host("proxy_grpc_close", "i")
def grpc_close(token: int) -> int:
    return _finish(token, cancel=False)


@host("proxy_grpc_cancel", "i")
def grpc_cancel(token: int) -> int:
    return _finish(token, cancel=True)


# -- delivering answers (called by the harness) ---------------------------------------------


def deliver_http_response(
    vm: VmLike, token: int, headers: HeaderMap, body: bytes, trailers: HeaderMap
) -> None:
    """Answer HTTP callout ``token``: ``proxy_on_http_call_response`` on the root context."""
    callout = vm.callouts.http.get(token)
    if callout is not None:
        callout.answered = True
    root = vm.root
    root.http_call_response = (headers, body, trailers)
    try:
        vm.call_cb(
            "proxy_on_http_call_response", root, root.id, token, len(headers), len(body),
            len(trailers),
        )  # fmt: skip
    finally:
        root.http_call_response = None


def fail_http_call(vm: VmLike, token: int) -> None:
    """The callout was reset: status BROKEN_CONNECTION/"reset", no headers or body."""
    callout = vm.callouts.http.get(token)
    if callout is not None:
        callout.answered = True
    root = vm.root
    root.status = (int(Status.BROKEN_CONNECTION), b"reset")
    try:
        vm.call_cb("proxy_on_http_call_response", root, root.id, token, 0, 0, 0)
    finally:
        root.status = (0, b"")


def deliver_grpc(
    vm: VmLike, token: int, *, initial: HeaderMap | None = None, message: bytes | None = None,
    trailing: HeaderMap | None = None, close: int | None = None, close_message: bytes = b"",
) -> None:  # fmt: skip
    """Deliver gRPC events for ``token`` in order: metadata, message, trailers, close(status)."""
    root = vm.root
    call = vm.call_cb
    if initial is not None:
        root.grpc_initial = initial
        call("proxy_on_grpc_receive_initial_metadata", root, root.id, token, len(initial))
        root.grpc_initial = None
    if message is not None:
        root.grpc_buffer = message
        call("proxy_on_grpc_receive", root, root.id, token, len(message))
        root.grpc_buffer = None
    if trailing is not None:
        root.grpc_trailing = trailing
        call("proxy_on_grpc_receive_trailing_metadata", root, root.id, token, len(trailing))
        root.grpc_trailing = None
    if close is not None:
        root.status = (close, close_message)
        call("proxy_on_grpc_close", root, root.id, token, close)
        root.status = (0, b"")
    grpc = vm.callouts.grpc.get(token)
    if grpc is not None and (close is not None or (message is not None and not grpc.stream)):
        grpc.done = True
