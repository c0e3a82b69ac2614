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
from wasm_agent.check.specx import CallExpect, CalloutReply, GrpcReply
from wasm_agent.host.callouts import GrpcCall, HttpCallout
from wasm_agent.host.exchange import Exchange, GrpcResponder, Responder
from wasm_agent.host.harness import HostedPlugin, LoadError, LogLevel, start_plugin

_LEVELS = {"trace": 0, "debug": 1, "info": 2, "warn": 3, "error": 4, "critical": 5}


def run_case(
    data: bytes,
    case: Case,
    default_config: bytes,
    root_id: str = "",
    capabilities: frozenset[str] | None = None,
) -> Check:
    """One case: a :class:`Check` in section ``spec`` that passes or lists the differences."""

    started = time.perf_counter()
    config = case.config if case.config is not None else default_config
    diffs: list[str] = []
    details: dict[str, Any] = {}
    try:
        host = start_plugin(data, plugin_config=config, root_id=root_id, log_level=LogLevel.TRACE,
                            trace_calls=False, allowed_capabilities=capabilities)  # fmt: skip
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
    if case.tcp is not None:
        _tcp_case(host, case, diffs, details)
    else:
        _http_case(host, case, diffs, details)
    if case.ticks and not diffs:
        _ticks(host, case.ticks, diffs)
    logs = [e for e in host.logs if e.context_id >= 0]  # load, the case, then ticks
    details["metrics"] = host.metrics
    _common(case, host.failed, logs, host.metrics, diffs)
    _calls(case, host.http_callouts, diffs)
    if case.benchmark and not diffs and case.tcp is None:
        details["benchmark"] = _benchmark(host, case)
    return _result(case, diffs, details, started)


def _request_headers(case: Case) -> list[tuple[str, str]]:
    req = case.request
    return [
        (":method", req.method), (":path", req.path), (":authority", req.authority),
        (":scheme", req.scheme), ("x-request-id", "wasm-agent-check"), *req.headers,
    ]  # fmt: skip


def _exchange(host: HostedPlugin, case: Case) -> Exchange:
    req, resp = case.request, case.response
    return host.exchange(
        _request_headers(case), req.body, [(":status", str(resp.status)), *resp.headers],
        resp.body, request_trailers=req.trailers, response_trailers=resp.trailers,
        callout_responder=_callout_responder(host, case.callouts),
        grpc_responder=_grpc_responder(case.grpc),
    )  # fmt: skip


def _http_case(host: HostedPlugin, case: Case, diffs: list[str], details: dict[str, Any]) -> None:
    ex = _exchange(host, case)
    details["exchange"] = ex.to_dict()
    _compare(case, ex, diffs)


def _callout_responder(host: HostedPlugin, replies: list[CalloutReply]) -> Responder | None:
    """Answer each HTTP callout with the first matching mocked reply (``timeout: true``: the
    callout's timeout fires: Envoy's 504 reply); unmatched callouts stay unanswered."""
    if not replies:
        return None

    def respond(callout: HttpCallout) -> tuple[Any, ...] | None:
        path = (callout.headers.get(b":path") or b"").decode("latin-1")
        for reply in replies:
            if reply.cluster not in (None, callout.cluster) or reply.path not in (None, path):
                continue
            if reply.timeout:
                host.timeout_http_call(callout.token)
                return None
            return [(":status", str(reply.status)), *reply.headers], reply.body
        return None

    return respond


def _grpc_responder(replies: list[GrpcReply]) -> GrpcResponder | None:
    if not replies:
        return None

    def respond(call: GrpcCall) -> dict[str, Any] | None:
        for reply in replies:
            if reply.service in (None, call.service_name) and reply.method in (None, call.method):
                answer: dict[str, Any] = {}
                if reply.message is not None:
                    answer["message"] = reply.message
                if reply.status is not None:
                    answer["close"] = reply.status
                    answer["close_message"] = reply.status_message
                return answer
        return None

    return respond


def _tcp_case(host: HostedPlugin, case: Case, diffs: list[str], details: dict[str, Any]) -> None:
    session = case.tcp
    assert session is not None
    connection = host.tcp_connection()
    for chunk in session.downstream:
        connection.send_downstream_data(chunk)
    for chunk in session.upstream:
        connection.send_upstream_data(chunk)
    if session.close == "upstream":
        connection.close_upstream()
    connection.close_downstream()
    upstream = bytes(connection.upstream_received).decode("utf-8", "replace")
    downstream = bytes(connection.downstream_received).decode("utf-8", "replace")
    details["tcp"] = {"upstream": upstream, "downstream": downstream, "closed": connection.closed}
    want = case.expect.tcp
    if want is None:
        return
    for label, expected, got in (("upstream", want.upstream, upstream),
                                 ("downstream", want.downstream, downstream)):  # fmt: skip
        if expected is not None and expected != got:
            diffs.append(_body_diff(f"tcp {label} data", expected, got))
    if want.closed is not None and want.closed != connection.closed:
        diffs.append(f"tcp closed: expected {want.closed}, got {connection.closed}")


def _ticks(host: HostedPlugin, ticks: int, diffs: list[str]) -> None:
    period = host.tick_period_ms
    if period <= 0:
        diffs.append("ticks: the plugin set no tick period (Envoy would never call proxy_on_tick)")
        return
    host.advance(period / 1000 * ticks)


def _calls(case: Case, made: list[HttpCallout], diffs: list[str]) -> None:
    """Each expected callout must match one made (in order)."""
    rest = list(made)
    for want in case.expect.calls:
        match = next((c for c in rest if _call_matches(want, c)), None)
        if match is None:
            seen = [f"  {c.cluster} {_text(c.headers.get(b':path'))}" for c in made] or ["  none"]
            diffs.append(f"calls: no callout matching {want}; the plugin made:\n" + "\n".join(seen))
            continue
        rest.remove(match)


def _call_matches(want: CallExpect, call: HttpCallout) -> bool:
    fields = {
        "cluster": call.cluster,
        "path": _text(call.headers.get(b":path")),
        "method": _text(call.headers.get(b":method")),
        "body": call.body.decode("utf-8", "replace"),
    }
    return all(getattr(want, k) in (None, v) for k, v in fields.items())


def _benchmark(host: HostedPlugin, case: Case) -> dict[str, Any]:
    """Time ``case.benchmark`` more exchanges of the case (like Google's service-extensions
    test runner): p50/p99 per exchange in microseconds."""
    samples = []
    for _ in range(case.benchmark):
        start = time.perf_counter()
        _exchange(host, case)
        samples.append((time.perf_counter() - start) * 1e6)
    samples.sort()
    pick = lambda q: samples[min(len(samples) - 1, int(q * len(samples)))]  # noqa: E731
    return {
        "exchanges": len(samples),
        "p50_us": round(pick(0.5), 1),
        "p99_us": round(pick(0.99), 1),
    }


def _result(case: Case, diffs: list[str], details: dict[str, Any], started: float) -> Check:
    elapsed = (time.perf_counter() - started) * 1000
    if diffs:
        first = diffs[0].splitlines()[0].rstrip(":")
        more = f" (+{len(diffs) - 1} more)" if len(diffs) > 1 else ""
        return Check("spec", case.name, Status.FAIL, first + more, details,
                     [line for d in diffs for line in d.splitlines()],
                     elapsed, case.location)  # fmt: skip
    message = "as expected"
    bench = details.get("benchmark")
    if bench:
        message += (f"; benchmark: p50 {bench['p50_us']} us, p99 {bench['p99_us']} us per "
                    f"exchange ({bench['exchanges']} exchanges)")  # fmt: skip
    return Check("spec", case.name, Status.PASS, message, details, [], elapsed,
                 case.location)  # fmt: skip


def _compare(case: Case, ex: Exchange, diffs: list[str]) -> None:
    expect = case.expect
    if ex.hung:
        diffs.append(f"{ex.outcome} (the plugin never returned from a callback; the host "
                     "stopped it with its fuel/deadline bound)")  # fmt: skip
        return
    if expect.upstream is False:
        if ex.upstream is not None:
            diffs.append("upstream: expected the request not to reach it, but it did")
    elif isinstance(expect.upstream, MessageExpect):
        _message("upstream", expect.upstream, ex.upstream, diffs)
    if expect.response is not None:
        _message("response", expect.response, ex.client, diffs)
    _local_reply(expect.local_reply, ex.local_response, diffs)


def _common(
    case: Case, failed: str | None, logs: list[Any], metrics: dict[str, Any], diffs: list[str]
) -> None:
    """Traps, logs and metrics (HTTP and TCP cases alike)."""
    expect = case.expect
    if failed:
        if expect.trap is None:
            diffs.append(f"plugin failed: {failed}")
        elif expect.trap not in failed:
            diffs.append(f"trap: expected one containing {expect.trap!r}, got {failed!r}")
    elif expect.trap is not None:
        diffs.append(f"trap: expected one containing {expect.trap!r}, but the plugin did not fail")
    for want in expect.logs:
        floor = _LEVELS[want.level] if want.level else -1
        lines = logs
        if not any(want.contains in e.message and int(e.level) >= floor for e in lines):
            level = f" at {want.level} or above" if want.level else ""
            seen = [f"  [{e.level.name.lower()}] {e.message}" for e in lines] or ["  (no logs)"]
            diffs.append(f"logs: no line containing {want.contains!r}{level}; the plugin logged:\n"
                         + "\n".join(seen))  # fmt: skip
    for name, value in expect.metrics.items():
        got = metrics.get(name)
        if got is None:
            known = ", ".join(sorted(metrics)) or "none"
            diffs.append(f"metric {name}: expected {value!r}, but it is not defined "
                         f"(defined: {known})")  # fmt: skip
        elif got != value:
            diffs.append(f"metric {name}: expected {value!r}, got {got!r}")


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
