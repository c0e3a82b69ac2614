"""Spec cases run in the reference host: passing expectations and readable differences."""

# ruff: noqa: E501  (inline WAT and YAML read better unwrapped)

from __future__ import annotations

from pathlib import Path

from tests.check.helpers import (
    AS_INDEX,
    C_BODY,
    C_HEADERS,
    C_LOCAL_REPLY,
    built,
    check_bytes,
    proxy_wat,
    wasm,
)
from tests.support.plugins import plugin
from wasm_agent.check.model import Status
from wasm_agent.check.runner import Options
from wasm_agent.check.spec import load_spec


def run_spec(tmp_path: Path, data: bytes, text: str, config: bytes = b"", root_id: str = ""):
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    report = check_bytes(data, config, options=Options(spec=load_spec(path)), root_id=root_id)
    return {c.name: c for c in report.checks if c.section == "spec"}


C_SPEC = """\
config: {"mode": "spec"}
cases:
  - name: headers both ways
    request:
      method: POST
      path: /api?q=1
      headers: {x-replace-req: old, x-remove-req: gone, x-echo-me: echoed}
    response:
      status: 201
      headers: {x-replace-resp: old}
      body: created
    expect:
      upstream:
        headers:
          x-added-req: "1"
          x-replace-req: replaced
          x-remove-req: null
          x-prop-method: POST
          x-prop-header: echoed
      response:
        status: 201
        headers: {x-added-resp: "1", x-replace-resp: replaced}
        body: created
      local_reply: false
      logs:
        - "headers: configured with '{\\"mode\\":\\"spec\\"}'"
        - {contains: "headers: request /api?q=1", level: info}
      metrics: {conformance_requests: 1, conformance_gauge: 42}
  - name: fresh plugin per case
    expect:
      metrics: {conformance_requests: 1}
"""


def test_c_headers_plugin_passes_its_spec(tmp_path: Path) -> None:
    cases = run_spec(tmp_path, built(C_HEADERS), C_SPEC)
    assert {n: c.status for n, c in cases.items()} == {
        "headers both ways": Status.PASS,
        "fresh plugin per case": Status.PASS,
    }, [c.detail_lines for c in cases.values()]
    first = cases["headers both ways"]
    assert first.location.endswith("spec.yaml:3")
    assert first.details["exchange"]["upstream"]["headers"]
    assert first.duration_ms is not None


def test_local_reply_and_upstream_not_reached(tmp_path: Path) -> None:
    spec = """\
- name: deny
  request: {path: /deny}
  expect:
    upstream: false
    local_reply: {status: 403, body: "denied by plugin\\n", details: denied_by_plugin}
    response: {status: 403, headers: {x-local-reply: "yes"}}
- name: allow
  request: {path: /ok}
  expect:
    upstream: {headers: {":path": /ok}}
    local_reply: false
"""
    cases = run_spec(tmp_path, built(C_LOCAL_REPLY), spec)
    assert all(c.status is Status.PASS for c in cases.values()), [
        c.detail_lines for c in cases.values()
    ]


def test_body_plugin(tmp_path: Path) -> None:
    spec = """\
- name: bodies
  request: {method: POST, body: abc}
  response: {body: hello}
  expect:
    upstream: {body: cba}
    response: {body: HELLO}
"""
    cases = run_spec(tmp_path, built(C_BODY), spec)
    assert cases["bodies"].status is Status.PASS, cases["bodies"].detail_lines


def test_assemblyscript_plugin_and_a_load_error_case(tmp_path: Path) -> None:
    spec = """\
- name: adds headers
  config: hello
  expect:
    upstream: {headers: {x-as-req: "1"}}
    response: {headers: {x-as-config: hello}}
    logs: [{contains: "as_headers: response", level: info}]
- name: empty configuration traps
  config: ""
  expect: {load_error: "proxy_on_configure failed"}
"""
    cases = run_spec(tmp_path, built(AS_INDEX), spec, b"x", root_id="as_headers")
    assert all(c.status is Status.PASS for c in cases.values()), [
        c.detail_lines for c in cases.values()
    ]


def test_wat_plugin(tmp_path: Path) -> None:
    spec = """\
- name: wat header
  request: {headers: {x-wat-req: original}}
  expect:
    upstream: {headers: {x-wat-req: from-wat}}
    response: {headers: {x-wat: hello}}
"""
    cases = run_spec(tmp_path, plugin("wat/add_header").read_bytes(), spec)
    assert cases["wat header"].status is Status.PASS, cases["wat header"].detail_lines


def test_differences_are_readable(tmp_path: Path) -> None:
    spec = """\
- name: all wrong
  response: {body: "one\\ntwo\\n"}
  expect:
    upstream: {headers: {x-added-req: "2", x-missing: "v", x-echo-me: null}}
    response: {status: 404, body: "one\\nthree\\n"}
    local_reply: true
    logs: [{contains: nope, level: error}]
    metrics: {conformance_requests: 5, undefined_metric: 1}
"""
    check = run_spec(tmp_path, built(C_HEADERS), spec)["all wrong"]
    assert check.status is Status.FAIL
    assert check.message == "upstream header x-added-req: expected '2', got '1' (+7 more)"
    lines = check.detail_lines
    assert "upstream header x-missing: expected 'v', got absent" in lines
    assert "response status: expected 404, got 200" in lines
    assert "response body differs:" in lines
    assert "  -three" in lines and "  +two" in lines
    assert "local reply: expected one, but the plugin sent none" in lines
    assert "logs: no line containing 'nope' at error or above; the plugin logged:" in lines
    assert "  [info] headers: request /" in lines
    assert "metric conformance_requests: expected 5, got 1" in lines
    assert any(
        line.startswith("metric undefined_metric: expected 1, but it is not defined")
        for line in lines
    )


def test_traps_fail_a_case_unless_expected(tmp_path: Path) -> None:
    trapping = wasm(proxy_wat(
        '(func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32) unreachable)'
    ))  # fmt: skip
    spec = """\
- name: unexpected
  expect: {}
- name: expected
  expect: {trap: unreachable, response: {status: 503}}
- name: expected but absent
  expect: {load_error: nope}
"""
    cases = run_spec(tmp_path, trapping, spec)
    assert cases["unexpected"].status is Status.FAIL
    assert cases["unexpected"].message.startswith(
        "plugin failed: Function: proxy_on_request_headers failed: "
        "Uncaught RuntimeError: unreachable"
    )
    assert cases["expected"].status is Status.PASS, cases["expected"].detail_lines
    assert cases["expected but absent"].message == (
        "load error: expected one containing 'nope', but the plugin loaded"
    )


# -- case kinds beyond one HTTP exchange (issue 15) --------------------------------------------

KINDS_SPEC = """\
cases:
  - name: tcp session
    tcp: {downstream: [hello, " world"], upstream: ECHO}
    expect:
      tcp: {upstream: HELLO WORLD, downstream: 3CHO, closed: false}
      logs: ["tcp: new connection"]
  - name: callout answered from the spec
    request: {headers: {x-callout: /auth}}
    callouts:
      - {cluster: callout, path: /auth, status: 202, headers: {x-callout: "yes"}, body: fine}
    expect:
      calls: [{cluster: callout, path: /auth, method: GET}]
      upstream:
        headers: {x-callout-status: "202", x-callout-header: "yes", x-callout-body: fine}
  - name: callout that times out
    request: {headers: {x-callout: /slow}}
    callouts: [{path: /slow, timeout: true}]
    expect:
      upstream: {headers: {x-callout-status: "504", x-callout-body: upstream request timeout}}
"""


def test_tcp_sessions_and_http_callouts(tmp_path: Path) -> None:
    tcp = run_spec(tmp_path, built("c/tcp"), KINDS_SPEC.split("  - name: callout answered")[0])
    assert tcp["tcp session"].status is Status.PASS, tcp["tcp session"].detail_lines
    callout_spec = (
        "cases:\n  - name: callout answered" + KINDS_SPEC.split("  - name: callout answered")[1]
    )
    checks = run_spec(tmp_path, built("c/callout"), callout_spec)
    for name, check in checks.items():
        assert check.status is Status.PASS, (name, check.detail_lines)


GRPC_TICKS = """\
  (func (export "proxy_on_vm_start") (param i32 i32) (result i32)
    (drop (call $proxy_set_tick_period_milliseconds (i32.const 500))) (i32.const 1))
  (func (export "proxy_on_tick") (param i32) (drop (call $proxy_log (i32.const 2) (i32.const 1060) (i32.const 4))))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (drop (call $proxy_grpc_call (i32.const 0) (i32.const 0) (i32.const 1024) (i32.const 3) (i32.const 1030) (i32.const 4)
                    (i32.const 0) (i32.const 0) (i32.const 1040) (i32.const 3) (i32.const 100) (i32.const 44)))
    (i32.const 0))
  (func (export "proxy_on_grpc_receive") (param $c i32) (param $t i32) (param $n i32)
    (drop (call $proxy_get_buffer_bytes (i32.const 5) (i32.const 0) (local.get $n) (i32.const 32) (i32.const 36)))
    (drop (call $proxy_log (i32.const 2) (i32.load (i32.const 32)) (i32.load (i32.const 36)))))
"""


def test_grpc_replies_ticks_and_benchmark(tmp_path: Path) -> None:
    from tests.host.wat import BASIC
    from tests.host.wat import plugin as wat_plugin

    data = wat_plugin(
        BASIC + GRPC_TICKS, data={1024: "svc", 1030: "Meth", 1040: "req", 1060: "tick"}
    )
    spec = """\
cases:
  - name: grpc, then two ticks
    grpc: [{service: svc, method: Meth, message: pong}]
    ticks: 2
    benchmark: 20
    expect:
      logs: [pong, tick]
  - name: no tick period
    ticks: 1
    expect: {}
"""
    checks = run_spec(tmp_path, data, spec)
    first = checks["grpc, then two ticks"]
    assert first.status is Status.PASS, first.detail_lines
    bench = first.details["benchmark"]
    assert bench["exchanges"] == 20 and 0 < bench["p50_us"] <= bench["p99_us"]
    assert "benchmark: p50" in first.message
    logs = [e for e in first.details["exchange"]["logs"]]
    assert logs  # the exchange's own logs are kept in the details


def test_capability_allow_list_in_the_spec(tmp_path: Path) -> None:
    spec = """\
capabilities: [proxy_log, proxy_on_context_create, proxy_on_vm_start, proxy_on_configure,
               proxy_on_request_headers, proxy_on_memory_allocate, proxy_get_header_map_value]
cases:
  - name: local reply refused
    request: {path: /local}
    expect:
      local_reply: false
"""
    path = tmp_path / "spec.yaml"
    path.write_text(spec)
    report = check_bytes(built("wat/golden"), b"", options=Options(spec=load_spec(path)))
    checks = {c.id: c for c in report.checks}
    caps = checks["compat.capabilities"]
    assert caps.status is Status.FAIL
    assert "proxy_send_local_response" in caps.details["not_allowed"]
    assert checks["spec.local reply refused"].status is Status.PASS


def test_unknown_case_key_is_a_usage_error_with_file_and_line(tmp_path: Path) -> None:
    import pytest

    from wasm_agent.check.spec import SpecError

    path = tmp_path / "spec.yaml"
    path.write_text(
        "cases:\n  - name: x\n    tcp: {downstream: a, clse: upstream}\n    expect: {}\n"
    )
    with pytest.raises(SpecError, match=r"spec.yaml:3: unknown key 'clse' in cases\[0\]\.tcp"):
        load_spec(path)


def test_runaway_plugin_is_reported_as_envoy_would_hang(tmp_path: Path) -> None:
    from tests.host.wat import BASIC
    from tests.host.wat import plugin as wat_plugin

    data = wat_plugin(BASIC + """
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (loop $l (br $l)) (i32.const 0))
""")  # fmt: skip
    checks = run_spec(tmp_path, data, "cases:\n  - name: loops\n    expect: {}\n")
    check = checks["loops"]
    assert check.status is Status.FAIL
    assert check.message.startswith("no response: Envoy would hang this stream")
