"""Spec cases run in the reference host: passing expectations and readable differences."""

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
