"""Run behaviour spec cases in the reference host and explain every difference.

Each case gets a fresh plugin (load, start, configure with the case's configuration), so
metrics, logs and shared state never leak from one case into the next; the compiled module is
shared, so that costs an instantiation, not a compile.
"""

from __future__ import annotations

import difflib
import time
from typing import Any

from wasm_agent.check.model import Check, Status
from wasm_agent.check.spec import Case, LocalReplyExpect, MessageExpect
from wasm_agent.host.harness import LoadError, LogLevel, start_plugin

_LEVELS = {"trace": 0, "debug": 1, "info": 2, "warn": 3, "error": 4, "critical": 5}


def run_case(data: bytes, case: Case, default_config: bytes, root_id: str = "") -> Check:
    """One case: a :class:`Check` in section ``spec`` that passes or lists the differences."""

    started = time.perf_counter()
    config = case.config if case.config is not None else default_config
    diffs: list[str] = []
    details: dict[str, Any] = {}
    try:
        host = start_plugin(data, plugin_config=config, root_id=root_id, log_level=LogLevel.TRACE)
    except LoadError as error:
        message = str(error)
        details["load_error"] = message
        want = case.expect.load_error
        if want is None:
            diffs.append(f"plugin failed to load: {message}")
        elif want not in message:
            diffs.append(f"load error: expected one containing {want!r}, got {message!r}")
        return _result(case, diffs, details, started)
    if case.expect.load_error is not None:
        diffs.append(f"load error: expected one containing {case.expect.load_error!r}, "
                     "but the plugin loaded")  # fmt: skip
        return _result(case, diffs, details, started)
    req = case.request
    request_headers = [
        (":method", req.method), (":path", req.path), (":authority", req.authority),
        (":scheme", req.scheme), ("x-request-id", "wasm-agent-check"), *req.headers,
    ]  # fmt: skip
    load_logs = list(host.logs)  # what the plugin logged while starting and configuring
    resp = case.response
    response_headers = [(":status", str(resp.status)), *resp.headers]
    ex = host.exchange(
        request_headers,
        req.body,
        response_headers,
        resp.body,
        request_trailers=req.trailers,
        response_trailers=resp.trailers,
    )
    logs = [e for e in load_logs if e.context_id >= 0] + [e for e in ex.logs if e.context_id >= 0]
    details["exchange"] = ex.to_dict()
    metrics = host.metrics
    details["metrics"] = metrics
    _compare(case, ex, logs, metrics, diffs)
    return _result(case, diffs, details, started)


def _result(case: Case, diffs: list[str], details: dict[str, Any], started: float) -> Check:
    elapsed = (time.perf_counter() - started) * 1000
    if diffs:
        first = diffs[0].splitlines()[0].rstrip(":")
        more = f" (+{len(diffs) - 1} more)" if len(diffs) > 1 else ""
        return Check("spec", case.name, Status.FAIL, first + more, details,
                     [line for d in diffs for line in d.splitlines()],
                     elapsed, case.location)  # fmt: skip
    return Check("spec", case.name, Status.PASS, "as expected", details, [], elapsed,
                 case.location)  # fmt: skip


def _compare(
    case: Case, ex: Any, logs: list[Any], metrics: dict[str, Any], diffs: list[str]
) -> None:
    expect = case.expect
    if ex.hung:
        diffs.append(f"{ex.outcome} (the plugin never returned from a callback; the host "
                     "stopped it with its fuel/deadline bound)")  # fmt: skip
        return
    if ex.failed:
        if expect.trap is None:
            diffs.append(f"plugin failed: {ex.failed}")
        elif expect.trap not in ex.failed:
            diffs.append(f"trap: expected one containing {expect.trap!r}, got {ex.failed!r}")
    elif expect.trap is not None:
        diffs.append(f"trap: expected one containing {expect.trap!r}, but the plugin did not fail")
    if expect.upstream is False:
        if ex.upstream is not None:
            diffs.append("upstream: expected the request not to reach it, but it did")
    elif isinstance(expect.upstream, MessageExpect):
        _message("upstream", expect.upstream, ex.upstream, diffs)
    if expect.response is not None:
        _message("response", expect.response, ex.client, diffs)
    _local_reply(expect.local_reply, ex.local_response, diffs)
    for want in expect.logs:
        floor = _LEVELS[want.level] if want.level else -1
        lines = logs
        if not any(want.contains in e.message and int(e.level) >= floor for e in lines):
            level = f" at {want.level} or above" if want.level else ""
            seen = [f"  [{e.level.name.lower()}] {e.message}" for e in lines] or ["  (no logs)"]
            diffs.append(f"logs: no line containing {want.contains!r}{level}; the plugin logged:\n"
                         + "\n".join(seen))  # fmt: skip
    for name, want in expect.metrics.items():
        got = metrics.get(name)
        if got is None:
            known = ", ".join(sorted(metrics)) or "none"
            diffs.append(f"metric {name}: expected {want!r}, but it is not defined "
                         f"(defined: {known})")  # fmt: skip
        elif got != want:
            diffs.append(f"metric {name}: expected {want!r}, got {got!r}")


def _message(label: str, want: MessageExpect, got: Any, diffs: list[str]) -> None:
    if got is None or got.headers is None:
        diffs.append(f"{label}: expected a message, but nothing was received")
        return
    headers = got.headers
    if want.status is not None:
        status = _text(headers.get(b":status"))
        if status != str(want.status):
            diffs.append(f"{label} status: expected {want.status}, got {status}")
    for name, value in want.headers.items():
        values = [_text(v) for v in headers.get_all(name)]
        if value is None:
            if values:
                diffs.append(f"{label} header {name}: expected absent, got {_show(values)}")
        elif isinstance(value, list):
            if values != value:
                diffs.append(f"{label} header {name}: expected {value!r}, got {_show(values)}")
        elif values != [value]:
            diffs.append(f"{label} header {name}: expected {value!r}, got {_show(values)}")
    if want.body is not None:
        body = bytes(got.body).decode("utf-8", "replace")
        if body != want.body:
            diffs.append(_body_diff(label, want.body, body))


def _local_reply(want: LocalReplyExpect | bool | None, got: Any, diffs: list[str]) -> None:
    if want is None:
        return
    if want is False:
        if got is not None:
            diffs.append(f"local reply: expected none, got {got.status} ({got.details})")
        return
    if got is None:
        diffs.append("local reply: expected one, but the plugin sent none")
        return
    if not isinstance(want, LocalReplyExpect):
        return
    if want.status is not None and got.status != want.status:
        diffs.append(f"local reply status: expected {want.status}, got {got.status}")
    if want.details is not None and got.details != want.details:
        diffs.append(f"local reply details: expected {want.details!r}, got {got.details!r}")
    body = bytes(got.body).decode("utf-8", "replace")
    if want.body is not None and body != want.body:
        diffs.append(_body_diff("local reply", want.body, body))


def _body_diff(label: str, want: str, got: str) -> str:
    if "\n" not in want.rstrip("\n") and "\n" not in got.rstrip("\n"):
        return f"{label} body: expected {want!r}, got {got!r}"
    lines = difflib.unified_diff(
        want.splitlines(), got.splitlines(), "expected", "actual", lineterm=""
    )
    return f"{label} body differs:\n" + "\n".join("  " + line for line in lines)


def _text(value: bytes | str | None) -> str | None:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value


def _show(values: list[str | None]) -> str:
    if not values:
        return "absent"
    return repr(values[0]) if len(values) == 1 else repr(values)
