"""One whole HTTP exchange through a hosted plugin (``HostedPlugin.exchange``): the request,
the upstream's answer, the response, the end of the stream, with Envoy's front end around them
(``frontend``)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from wasm_agent.host import frontend as fe
from wasm_agent.host.callouts import GrpcCall, HttpCallout
from wasm_agent.host.http import HttpStream, LocalResponse, Message
from wasm_agent.host.maps import HeaderMap
from wasm_agent.host.vmtypes import HANG, LogEntry

if TYPE_CHECKING:
    from wasm_agent.host.harness import HostedPlugin

Headers = Mapping[str, str] | list[tuple[str, str]] | HeaderMap
Responder = Callable[[HttpCallout], tuple[Any, ...] | None]
# A gRPC peer: given a call, None (no answer yet), bytes (the unary reply) or respond_grpc kwargs.
GrpcResponder = Callable[[GrpcCall], bytes | dict[str, Any] | None]
# An upstream: given what it received (a Message), answers (headers, body[, trailers]).
Upstream = Callable[[Message], tuple[Any, ...]]
# A body: bytes/str, or a list of chunks delivered one by one (a trailing b"" chunk mimics the
# separate empty end-of-stream frame Envoy's HTTP/1 codec often produces).
Body = bytes | str | list[bytes] | tuple[bytes, ...]


def to_bytes(value: bytes | str | None) -> bytes:
    if value is None:
        return b""
    return value.encode() if isinstance(value, str) else bytes(value)


@dataclass
class Exchange:
    """The outcome of one request/response through the plugin."""

    upstream: Message | None
    client: Message | None
    actions: list[tuple[str, str]]
    local_response: LocalResponse | None
    logs: list[LogEntry]
    failed: str | None
    reset: bool = False
    stream: HttpStream | None = field(default=None, repr=False)
    hung: bool = False  # a runaway plugin: Envoy would never answer (see ``outcome``)

    @property
    def outcome(self) -> str:
        """``"no response: Envoy would hang this stream"``, else the client's status."""
        if self.hung:
            return HANG
        if self.client is None or self.client.headers is None:
            return "no response"
        return (self.client.headers.get(b":status") or b"").decode()

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready view (used by ``wasm-agent run --json``)."""
        return {
            "upstream": self.upstream.to_dict() if self.upstream else None,
            "client": self.client.to_dict() if self.client else None,
            "actions": [list(a) for a in self.actions],
            "local_response": (
                {"status": self.local_response.status, "details": self.local_response.details}
                if self.local_response
                else None
            ),
            "logs": [{"level": e.level.name, "message": e.message} for e in self.logs],
            "failed": self.failed,
            "reset": self.reset,
            "hung": self.hung,
            "outcome": self.outcome,
        }


def run(
    hosted: HostedPlugin,
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
    """``HostedPlugin.exchange`` (documented there)."""
    if upstream is not None and (response_headers is not None or response_body):
        raise ValueError("give either upstream= or response_headers/response_body")
    hosted.streams += 1
    s = hosted.http_stream()
    s.frontend = frontend
    vm = s.vm or hosted.vm
    logs_before = len(vm.logs)  # after a FAIL_RELOAD reload: the new VM's, startup excluded
    request_chunks = _chunks(request_body, chunk_size)
    if frontend:
        size = sum(len(chunk) for chunk in request_chunks)
        given = _pairs(request_headers)
        s.closing = fe.client_closes(given)
        source = fe.forwarded_source(given)
        if source is not None:
            s.overrides[b"source\0address"] = source.encode()
            s.overrides[b"source\0port"] = (0).to_bytes(8, "little")
        request_headers = fe.request_headers(given, size, hosted.streams)
        request_chunks = fe.frames(request_chunks)
    _send(s.send_request_headers, s.send_request_body, s.send_request_trailers,
          request_headers, request_chunks, request_trailers)  # fmt: skip
    answer_callouts(hosted, callout_responder, frontend)
    hosted.answer_grpc(grpc_responder)
    # HTTP/1 framing: the upstream reads the announced length; a shorter body keeps it waiting
    received = fe.as_read(s.upstream) if frontend else s.upstream
    if s.upstream.complete and not s.closed and received is not None:
        if upstream is not None:
            response_headers, response_body, *rest = upstream(received)
            response_trailers = rest[0] if rest else None
        response_chunks = _chunks(response_body, chunk_size)
        headers: Headers = response_headers or {":status": "200"}
        if frontend:
            headers = fe.response_headers(_pairs(headers))
            response_chunks = fe.frames(response_chunks)
        _send(s.send_response_headers, s.send_response_body, s.send_response_trailers,
              headers, response_chunks, response_trailers)  # fmt: skip
        answer_callouts(hosted, callout_responder, frontend)
        hosted.answer_grpc(grpc_responder)
    if complete:  # a stream left waiting ends when the client gives up: on_log etc. still run
        s.complete()
    hosted.clock.observe(hosted.plugin)  # callouts made now start their timeouts now
    # a runaway in a callback outside the stream's (a callout's answer) hangs its worker too
    hung = s.hung or (s.vm is not None and s.vm.hung is not None)
    client = _client_view(s, frontend) if not hung else None
    return Exchange(
        upstream=s.upstream if s.upstream.headers is not None else None,
        client=client,
        actions=list(s.actions),
        local_response=s.local_response,
        logs=vm.logs[logs_before:],
        failed=vm.failed,
        reset=s.reset,
        stream=s,
        hung=hung,
    )


def _client_view(s: HttpStream, frontend: bool) -> Message | None:
    """What the client read: with the front-end model, as the HTTP/1 codec framed it (no body
    for HEAD or 204/304, at most the announced length, None while a shorter body keeps the
    client waiting: Envoy 1.40 with a plugin growing or shrinking a body under an unchanged
    content-length)."""
    client = s.client
    if client.headers is None:
        return None
    if not frontend:
        return client
    pairs = fe.client_headers(client.headers.pairs(), len(client.body))
    body: bytearray | None = bytearray() if fe.bodiless(pairs, s.head) else client.body
    if client.complete and body:
        body = fe.framed(pairs, body)
    if body is None:
        return None
    return Message(HeaderMap(pairs), body, client.trailers, client.complete)


def _chunks(body: Body, chunk_size: int | None) -> list[bytes]:
    """The body as the chunks to deliver (a list is taken as is, b"" included)."""
    if isinstance(body, list | tuple):
        return [to_bytes(chunk) for chunk in body]
    data = to_bytes(body)
    step = chunk_size or len(data) or 1
    return [data[i : i + step] for i in range(0, len(data), step)]


def _pairs(headers: Headers) -> list[tuple[str, str]]:
    """Headers as ``(str, str)`` pairs (names lower-cased), whatever shape they came in."""
    return HeaderMap.coerce(headers).pairs()


def _send(
    headers_fn: Callable[..., str],
    body_fn: Callable[..., str],
    trailers_fn: Callable[..., str],
    headers: Headers,
    chunks: list[bytes],
    trailers: Headers | None,
) -> None:
    has_trailers = trailers is not None
    headers_fn(headers, end_stream=not chunks and not has_trailers)
    for index, chunk in enumerate(chunks):
        body_fn(chunk, end_stream=index == len(chunks) - 1 and not has_trailers)
    if has_trailers:
        trailers_fn(trailers)


def answer_grpc(hosted: HostedPlugin, responder: GrpcResponder | None) -> None:
    """Answer pending gRPC calls/streams in order: the responder returns None (leave it),
    bytes (the reply message of a unary call) or ``respond_grpc`` keyword arguments."""
    if responder is None:
        return
    asked: set[int] = set()
    for _ in range(1000):
        pending = [
            c for c in hosted.vm.callouts.grpc.values()
            if not (c.done or c.cancelled) and c.token not in asked
        ]  # fmt: skip
        if not pending:
            return
        call = pending[0]
        asked.add(call.token)
        answer = responder(call)
        if isinstance(answer, bytes | bytearray):
            hosted.respond_grpc(call.token, message=bytes(answer))
        elif answer is not None:
            hosted.respond_grpc(call.token, **answer)


def answer_callouts(
    hosted: HostedPlugin, responder: Responder | None, frontend: bool = False
) -> None:
    """Answer pending HTTP callouts (including ones made while answering) in order;
    ``frontend``: the async client's router appends ``x-envoy-upstream-service-time`` to the
    answer's headers, as for any upstream response (recorded from Envoy 1.40)."""
    if responder is None:
        return
    asked: set[int] = set()
    for _ in range(1000):
        pending = [c for c in hosted.vm.callouts.http.values() if not c.answered]
        pending = [c for c in pending if c.token not in asked]
        if not pending:
            return
        callout = pending[0]
        asked.add(callout.token)
        answer = responder(callout)
        if answer is not None:
            headers, body, *rest = answer
            if frontend:
                headers = fe.response_headers(_pairs(headers))
            hosted.respond_http_call(callout.token, headers, body, rest[0] if rest else None)
