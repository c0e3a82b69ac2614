"""Spec case kinds beyond one HTTP exchange (``docs/check.md``): TCP sessions, mocked HTTP
callout replies, mocked gRPC replies, ticks, per-case ``benchmark: N``, the spec-level
``capabilities`` allow-list, and what to expect of them. Parsed with ``spec._Reader``'s strict
key checks (unknown keys are usage errors with file and line)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml


@dataclass
class TcpSession:
    """Bytes the client sends, then bytes the upstream sends back; who closes first."""

    downstream: list[bytes] = field(default_factory=list)
    upstream: list[bytes] = field(default_factory=list)
    close: str = "downstream"  # or "upstream"


@dataclass
class CalloutReply:
    """The mocked answer to HTTP callouts matching ``cluster``/``path`` (None: any)."""

    cluster: str | None = None
    path: str | None = None
    status: int = 200
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    timeout: bool = False  # no answer: the callout's timeout fires (Envoy's 504 reply)


@dataclass
class GrpcReply:
    """The mocked answer to gRPC calls matching ``service``/``method`` (None: any)."""

    service: str | None = None
    method: str | None = None
    message: bytes | None = None
    status: int | None = None  # close the call with this gRPC status
    status_message: str = ""


@dataclass
class CallExpect:
    """An HTTP callout the plugin must make (fields left out are not compared)."""

    cluster: str | None = None
    path: str | None = None
    method: str | None = None
    body: str | None = None


@dataclass
class TcpExpect:
    upstream: str | None = None  # what the upstream received
    downstream: str | None = None  # what the client received
    closed: bool | None = None  # the plugin closed the connection


def _reader_seq(reader: Any, node: Any, where: str) -> list[Any]:
    if not isinstance(node, yaml.SequenceNode):
        raise reader.error(node, f"{where} must be a list")
    return list(node.value)


def chunks(reader: Any, node: Any, where: str) -> list[bytes]:
    """A string, or a list of strings (one chunk each)."""
    if isinstance(node, yaml.SequenceNode):
        return [reader.string(n, f"{where}[{i}]").encode() for i, n in enumerate(node.value)]
    return [reader.string(node, where).encode()]


def tcp_session(reader: Any, node: Any, where: str) -> TcpSession:
    keys = reader.mapping(node, where, ("downstream", "upstream", "close"))
    session = TcpSession()
    if "downstream" in keys:
        session.downstream = chunks(reader, keys["downstream"], f"{where}.downstream")
    if "upstream" in keys:
        session.upstream = chunks(reader, keys["upstream"], f"{where}.upstream")
    if "close" in keys:
        session.close = reader.string(keys["close"], f"{where}.close")
        if session.close not in ("downstream", "upstream"):
            raise reader.error(keys["close"], f"{where}.close must be downstream or upstream")
    return session


def callout_replies(reader: Any, node: Any, where: str) -> list[CalloutReply]:
    out = []
    for i, item in enumerate(_reader_seq(reader, node, where)):
        w = f"{where}[{i}]"
        keys = reader.mapping(item, w, ("cluster", "path", "status", "headers", "body", "timeout"))
        reply = CalloutReply()
        reader.fill(reply, keys, w, cluster=reader.string, path=reader.string,
                    status=reader.integer, headers=reader.headers, body=reader.body)  # fmt: skip
        if "timeout" in keys:
            reply.timeout = bool(reader.value(keys["timeout"]))
        out.append(reply)
    return out


def grpc_replies(reader: Any, node: Any, where: str) -> list[GrpcReply]:
    out = []
    for i, item in enumerate(_reader_seq(reader, node, where)):
        w = f"{where}[{i}]"
        keys = reader.mapping(item, w, ("service", "method", "message", "status", "status_message"))
        reply = GrpcReply()
        text = reader.string
        reader.fill(reply, keys, w, service=text, method=text, status_message=text,
                    message=reader.body, status=reader.integer)  # fmt: skip
        if reply.message is None and reply.status is None:
            raise reader.error(item, f"{w} needs a 'message' or a 'status'")
        out.append(reply)
    return out


def call_expects(reader: Any, node: Any, where: str) -> list[CallExpect]:
    out = []
    for i, item in enumerate(_reader_seq(reader, node, where)):
        w = f"{where}[{i}]"
        keys = reader.mapping(item, w, ("cluster", "path", "method", "body"))
        call = CallExpect()
        for name in ("cluster", "path", "method", "body"):
            if name in keys:
                setattr(call, name, reader.string(keys[name], f"{w}.{name}"))
        out.append(call)
    return out


def tcp_expect(reader: Any, node: Any, where: str) -> TcpExpect:
    keys = reader.mapping(node, where, ("upstream", "downstream", "closed"))
    out = TcpExpect()
    for name in ("upstream", "downstream"):
        if name in keys:
            setattr(out, name, reader.string(keys[name], f"{where}.{name}"))
    if "closed" in keys:
        value = reader.value(keys["closed"])
        if not isinstance(value, bool):
            raise reader.error(keys["closed"], f"{where}.closed must be true or false")
        out.closed = value
    return out


def positive(reader: Any, node: Any, where: str, limit: int) -> int:
    value = reader.integer(node, where)
    if not 1 <= value <= limit:
        raise reader.error(node, f"{where} must be between 1 and {limit}, got {value}")
    return value


def names(reader: Any, node: Any, where: str) -> list[str]:
    return [
        reader.string(n, f"{where}[{i}]") for i, n in enumerate(_reader_seq(reader, node, where))
    ]


def case_kinds(reader: Any, case: Any, keys: dict[str, Any], where: str) -> None:
    """Fill a case's keys beyond one HTTP exchange."""
    if "tcp" in keys:
        case.tcp = tcp_session(reader, keys["tcp"], f"{where}.tcp")
    if "callouts" in keys:
        case.callouts = callout_replies(reader, keys["callouts"], f"{where}.callouts")
    if "grpc" in keys:
        case.grpc = grpc_replies(reader, keys["grpc"], f"{where}.grpc")
    if "ticks" in keys:
        case.ticks = positive(reader, keys["ticks"], f"{where}.ticks", 10_000)
    if "benchmark" in keys:
        case.benchmark = positive(reader, keys["benchmark"], f"{where}.benchmark", 1_000_000)
