"""Behaviour spec files (YAML) for ``wasm-agent check --spec``: strict, with line numbers.

The file is composed into YAML nodes first, so every error names the file, the line and the
key (``spec.yaml:12: unknown key 'heders' in cases[0].request (expected one of: ...)``).
The format is documented in ``docs/check.md``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from wasm_agent.check import specx
from wasm_agent.check.specx import (
    CallExpect,
    CalloutReply,
    GrpcReply,
    TcpExpect,
    TcpSession,
)
from wasm_agent.core.errors import WasmAgentError

MAX_SPEC_BYTES = 16 * 1024 * 1024
LOG_LEVELS = ("trace", "debug", "info", "warn", "error", "critical")


CASE_KEYS = ("name", "config", "request", "response", "expect", "tcp", "callouts", "grpc",
             "ticks", "benchmark")  # fmt: skip


class SpecError(WasmAgentError, ValueError):
    """A spec file that cannot be used; ``str()`` is ``file:line: problem``."""


@dataclass
class Request:
    method: str = "GET"
    path: str = "/"
    authority: str = "example.com"
    scheme: str = "http"
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    trailers: list[tuple[str, str]] | None = None


@dataclass
class Response:
    status: int = 200
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    trailers: list[tuple[str, str]] | None = None


@dataclass
class MessageExpect:
    """Expected headers (None value: must be absent; list: every value in order) and body."""

    status: int | None = None
    headers: dict[str, str | list[str] | None] = field(default_factory=dict)
    body: str | None = None


@dataclass
class LocalReplyExpect:
    status: int | None = None
    body: str | None = None
    details: str | None = None


@dataclass
class LogExpect:
    contains: str
    level: str | None = None


@dataclass
class Expect:
    upstream: MessageExpect | bool | None = None  # False: the request must not reach it
    response: MessageExpect | None = None
    local_reply: LocalReplyExpect | bool | None = None
    logs: list[LogExpect] = field(default_factory=list)
    metrics: dict[str, int | list[int]] = field(default_factory=dict)
    load_error: str | None = None
    trap: str | None = None
    calls: list[CallExpect] = field(default_factory=list)  # HTTP callouts the plugin makes
    tcp: TcpExpect | None = None


@dataclass
class Case:
    name: str
    location: str  # file:line
    config: bytes | None  # None: the spec's (or the command's) configuration
    request: Request
    response: Response
    expect: Expect
    tcp: TcpSession | None = None  # a TCP session instead of an HTTP exchange
    callouts: list[CalloutReply] = field(default_factory=list)
    grpc: list[GrpcReply] = field(default_factory=list)
    ticks: int = 0  # tick periods to let pass after the exchange
    benchmark: int = 0  # then time this many more exchanges (p50/p99)


@dataclass
class Spec:
    path: Path
    config: bytes | None
    cases: list[Case]
    capabilities: list[str] | None = None  # Envoy's capability allow-list for every case


def load_spec(path: Path) -> Spec:
    """Read and validate a spec file; raise :class:`SpecError` naming file, line and key."""

    try:
        if path.is_dir():
            raise SpecError(f"{path}: is a directory, not a spec file")
        if path.stat().st_size > MAX_SPEC_BYTES:
            raise SpecError(f"{path}: over {MAX_SPEC_BYTES >> 20} MiB, not a spec file")
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as error:
        raise SpecError(f"{path}: cannot read: {error}") from None
    # libyaml's loader when present (10x faster), with the same nodes and marks
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)(text)
    try:
        root = loader.get_single_node()
        return _Reader(loader, path).spec(root)
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise SpecError(f"{where}: invalid YAML: {error.problem or error.context}") from None
    except yaml.YAMLError as error:
        raise SpecError(f"{path}: invalid YAML: {error}") from None
    finally:
        loader.dispose()


class _Reader:
    """Turns nodes into spec objects, checking keys and types."""

    def __init__(self, loader: Any, path: Path) -> None:
        self.loader = loader
        self.path = path

    def error(self, node: Any, message: str) -> SpecError:
        line = node.start_mark.line + 1 if node is not None else 1
        return SpecError(f"{self.path}:{line}: {message}")

    def value(self, node: Any) -> Any:
        return self.loader.construct_object(node, deep=True)

    def mapping(self, node: Any, where: str, allowed: tuple[str, ...]) -> dict[str, Any]:
        if not isinstance(node, yaml.MappingNode):
            raise self.error(node, f"{where} must be a mapping")
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            key = self.value(key_node)
            if not isinstance(key, str):
                raise self.error(key_node, f"{where}: keys must be strings, not {key!r}")
            if key not in allowed:
                raise self.error(
                    key_node,
                    f"unknown key {key!r} in {where} (expected one of: {', '.join(allowed)})",
                )
            if key in out:
                raise self.error(key_node, f"duplicate key {key!r} in {where}")
            out[key] = value_node
        return out

    def string(self, node: Any, where: str, *, numbers: bool = False) -> str:
        value = self.value(node)
        if isinstance(value, str):
            return value
        if numbers and isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise self.error(node, f"{where} must be a string, not {_type(value)}")

    def integer(self, node: Any, where: str) -> int:
        value = self.value(node)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(node, f"{where} must be an integer, not {_type(value)}")
        return value

    def config(self, node: Any, where: str) -> bytes | None:
        value = self.value(node)
        if value is None:
            return None
        if isinstance(value, str):
            return value.encode()
        if isinstance(value, (dict, list)):  # handed to the plugin as JSON, like pluginConfig
            return json.dumps(value, separators=(",", ":"), default=str).encode()
        raise self.error(node, f"{where} must be a string, a mapping or a list")

    # -- the document ------------------------------------------------------------------------

    def spec(self, root: Any) -> Spec:
        if root is None:
            raise SpecError(f"{self.path}: empty spec file (expected a list of cases)")
        config = None
        capabilities = None
        cases_node = root
        if isinstance(root, yaml.MappingNode):
            top = self.mapping(root, "the spec", ("config", "capabilities", "cases"))
            if "cases" not in top:
                raise self.error(root, "the spec has no 'cases' list")
            config = self.config(top["config"], "config") if "config" in top else None
            if "capabilities" in top:
                capabilities = specx.names(self, top["capabilities"], "capabilities")
            cases_node = top["cases"]
        if not isinstance(cases_node, yaml.SequenceNode):
            raise self.error(cases_node, "cases must be a list")
        if not cases_node.value:
            raise self.error(cases_node, "the spec has no cases")
        cases = [self.case(n, i) for i, n in enumerate(cases_node.value)]
        seen: dict[str, str] = {}
        for case in cases:
            if case.name in seen:
                first = seen[case.name]
                raise SpecError(
                    f"{case.location}: duplicate case name {case.name!r} (first: {first})"
                )
            seen[case.name] = case.location
        return Spec(self.path, config, cases, capabilities)

    def case(self, node: Any, index: int) -> Case:
        where = f"cases[{index}]"
        keys = self.mapping(node, where, CASE_KEYS)
        name = self.string(keys["name"], f"{where}.name") if "name" in keys else f"case {index + 1}"
        if not name.strip():
            raise self.error(node, f"{where}.name is empty")
        config = self.config(keys["config"], f"{where}.config") if "config" in keys else None
        if "expect" not in keys:
            raise self.error(node, f"{where} ({name!r}) has no 'expect'")
        case = Case(
            name=name,
            location=f"{self.path}:{node.start_mark.line + 1}",
            config=config,
            request=self.request(keys.get("request"), f"{where}.request"),
            response=self.response(keys.get("response"), f"{where}.response"),
            expect=self.expect(keys["expect"], f"{where}.expect"),
        )
        specx.case_kinds(self, case, keys, where)
        return case

    def headers(self, node: Any, where: str) -> list[tuple[str, str]]:
        pairs = []
        for key, value_node in self.mapping_any(node, where).items():
            values = self.value(value_node)
            items = value_node.value if isinstance(values, list) else [value_node]
            for item in items:
                pairs.append((key.lower(), self.string(item, f"{where}.{key}", numbers=True)))
        return pairs

    def mapping_any(self, node: Any, where: str) -> dict[str, Any]:
        if not isinstance(node, yaml.MappingNode):
            raise self.error(node, f"{where} must be a mapping of names to values")
        out = {}
        for key_node, value_node in node.value:
            key = self.value(key_node)
            if not isinstance(key, str) or not key:
                raise self.error(key_node, f"{where}: names must be non-empty strings")
            out[key] = value_node
        return out

    def body(self, node: Any, where: str) -> bytes:
        return self.string(node, where).encode()

    def fill(self, target: Any, keys: dict[str, Any], where: str, **readers: Any) -> None:
        """Set on ``target`` each field of ``readers`` that ``keys`` has, read by its reader."""
        for name, read in readers.items():
            if name in keys:
                setattr(target, name, read(keys[name], f"{where}.{name}"))

    def request(self, node: Any, where: str) -> Request:
        request = Request()
        if node is None:
            return request
        keys = self.mapping(
            node, where, ("method", "path", "authority", "scheme", "headers", "body", "trailers")
        )
        text, headers = self.string, self.headers
        self.fill(request, keys, where, method=text, path=text, authority=text, scheme=text,
                  headers=headers, body=self.body, trailers=headers)  # fmt: skip
        return request

    def response(self, node: Any, where: str) -> Response:
        response = Response()
        if node is None:
            return response
        keys = self.mapping(node, where, ("status", "headers", "body", "trailers"))
        self.fill(response, keys, where, status=self.integer, headers=self.headers,
                  body=self.body, trailers=self.headers)  # fmt: skip
        return response

    def expect(self, node: Any, where: str) -> Expect:
        keys = self.mapping(
            node,
            where,
            ("upstream", "response", "local_reply", "logs", "metrics", "load_error", "trap",
             "calls", "tcp"),
        )  # fmt: skip
        expect = Expect()
        if "upstream" in keys:
            value = self.value(keys["upstream"])
            if value is False:
                expect.upstream = False
            else:
                expect.upstream = self.message(keys["upstream"], f"{where}.upstream", status=False)
        if "response" in keys:
            expect.response = self.message(keys["response"], f"{where}.response", status=True)
        if "local_reply" in keys:
            expect.local_reply = self.local_reply(keys["local_reply"], f"{where}.local_reply")
        if "logs" in keys:
            expect.logs = self.logs(keys["logs"], f"{where}.logs")
        if "metrics" in keys:
            expect.metrics = self.metrics(keys["metrics"], f"{where}.metrics")
        for name in ("load_error", "trap"):
            if name in keys:
                setattr(expect, name, self.string(keys[name], f"{where}.{name}"))
        if "calls" in keys:
            expect.calls = specx.call_expects(self, keys["calls"], f"{where}.calls")
        if "tcp" in keys:
            expect.tcp = specx.tcp_expect(self, keys["tcp"], f"{where}.tcp")
        return expect

    def message(self, node: Any, where: str, status: bool) -> MessageExpect:
        allowed = ("status", "headers", "body") if status else ("headers", "body")
        keys = self.mapping(node, where, allowed)
        out = MessageExpect()
        if "status" in keys:
            out.status = self.integer(keys["status"], f"{where}.status")
        if "headers" in keys:
            for key, value_node in self.mapping_any(keys["headers"], f"{where}.headers").items():
                value = self.value(value_node)
                field_where = f"{where}.headers.{key}"
                if value is None:
                    out.headers[key.lower()] = None
                elif isinstance(value, list):
                    out.headers[key.lower()] = [
                        self.string(v, field_where, numbers=True) for v in value_node.value
                    ]
                else:
                    out.headers[key.lower()] = self.string(value_node, field_where, numbers=True)
        if "body" in keys:
            out.body = self.string(keys["body"], f"{where}.body")
        return out

    def local_reply(self, node: Any, where: str) -> LocalReplyExpect | bool:
        value = self.value(node)
        if isinstance(value, bool):
            return value
        keys = self.mapping(node, where, ("status", "body", "details"))
        out = LocalReplyExpect()
        if "status" in keys:
            out.status = self.integer(keys["status"], f"{where}.status")
        for name in ("body", "details"):
            if name in keys:
                setattr(out, name, self.string(keys[name], f"{where}.{name}"))
        return out

    def logs(self, node: Any, where: str) -> list[LogExpect]:
        if not isinstance(node, yaml.SequenceNode):
            raise self.error(node, f"{where} must be a list")
        out = []
        for i, item in enumerate(node.value):
            item_where = f"{where}[{i}]"
            if isinstance(item, yaml.ScalarNode):
                out.append(LogExpect(self.string(item, item_where)))
                continue
            keys = self.mapping(item, item_where, ("contains", "level"))
            if "contains" not in keys:
                raise self.error(item, f"{item_where} has no 'contains'")
            level = None
            if "level" in keys:
                level = self.string(keys["level"], f"{item_where}.level").lower()
                if level not in LOG_LEVELS:
                    raise self.error(
                        keys["level"],
                        f"{item_where}.level: unknown level {level!r} "
                        f"(expected one of: {', '.join(LOG_LEVELS)})",
                    )
            out.append(LogExpect(self.string(keys["contains"], f"{item_where}.contains"), level))
        return out

    def metrics(self, node: Any, where: str) -> dict[str, int | list[int]]:
        out: dict[str, int | list[int]] = {}
        for name, value_node in self.mapping_any(node, where).items():
            value = self.value(value_node)
            if isinstance(value, list):
                out[name] = [self.integer(v, f"{where}.{name}") for v in value_node.value]
            else:
                out[name] = self.integer(value_node, f"{where}.{name}")
        return out


def _type(value: object) -> str:
    return {type(None): "null", dict: "a mapping", list: "a list", bool: "a boolean"}.get(
        type(value), type(value).__name__
    )
