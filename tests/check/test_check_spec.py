"""Spec files: the format, and errors that name file, line and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from wasm_agent.check.spec import LocalReplyExpect, LogExpect, SpecError, load_spec

FULL = """\
config:
  greeting: hi
cases:
  - name: everything
    config: "raw text"
    request:
      method: POST
      path: /x
      authority: svc.local
      scheme: https
      headers:
        X-One: 1
        set-cookie: [a, b]
      body: hello
      trailers: {grpc-status: "0"}
    response:
      status: 201
      headers: {content-type: text/plain}
      body: ok
    expect:
      upstream:
        headers: {x-added: "yes", x-gone: null, x-multi: [a, b]}
        body: hello
      response: {status: 201, headers: {x-r: "1"}, body: ok}
      local_reply: {status: 403, body: nope, details: why}
      logs: [started, {contains: done, level: WARN}]
      metrics: {requests: 1, sizes: [1, 2]}
  - expect:
      upstream: false
      local_reply: true
      load_error: bad config
      trap: unreachable
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    return path


def test_full_format(tmp_path: Path) -> None:
    spec = load_spec(write(tmp_path, FULL))
    assert spec.config == b'{"greeting":"hi"}'
    first, second = spec.cases
    assert first.name == "everything" and first.location.endswith("spec.yaml:4")
    assert first.config == b"raw text"
    r = first.request
    assert (r.method, r.path, r.authority, r.scheme, r.body) == (
        "POST", "/x", "svc.local", "https", b"hello"
    )  # fmt: skip
    assert r.headers == [("x-one", "1"), ("set-cookie", "a"), ("set-cookie", "b")]
    assert r.trailers == [("grpc-status", "0")]
    assert (first.response.status, first.response.body) == (201, b"ok")
    e = first.expect
    assert e.upstream.headers == {"x-added": "yes", "x-gone": None, "x-multi": ["a", "b"]}
    assert e.response.status == 201 and e.response.body == "ok"
    assert e.local_reply == LocalReplyExpect(403, "nope", "why")
    assert e.logs == [LogExpect("started"), LogExpect("done", "warn")]
    assert e.metrics == {"requests": 1, "sizes": [1, 2]}
    assert second.name == "case 2" and second.config is None
    assert second.expect.upstream is False and second.expect.local_reply is True
    assert (second.expect.load_error, second.expect.trap) == ("bad config", "unreachable")
    assert second.request.method == "GET" and second.response.status == 200


def test_a_plain_list_is_a_spec(tmp_path: Path) -> None:
    spec = load_spec(write(tmp_path, "- name: a\n  expect: {}\n"))
    assert spec.config is None and [c.name for c in spec.cases] == ["a"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "- name: a\n  request:\n    heders: {}\n  expect: {}\n",
            "spec.yaml:3: unknown key 'heders' in cases[0].request (expected one of: method, path,",
        ),
        (
            "cases:\n  - name: a\n    expect:\n      respnse: {}\n",
            "spec.yaml:4: unknown key 'respnse' in cases[0].expect",
        ),
        ("confg: x\ncases: []\n", "spec.yaml:1: unknown key 'confg' in the spec"),
        ("- name: a\n  expect:\n    response: {status: ok}\n",
         "spec.yaml:3: cases[0].expect.response.status must be an integer, not str"),
        ("- name: a\n  expect: {}\n   bad: indent\n", "spec.yaml:3:4: invalid YAML"),
        ("- name: [unclosed\n", "spec.yaml:2:1: invalid YAML"),
        ("", "empty spec file"),
        ("cases: []\n", "spec.yaml:1: the spec has no cases"),
        ("- name: a\n", "spec.yaml:1: cases[0] ('a') has no 'expect'"),
        ("- name: a\n  expect: {}\n- name: a\n  expect: {}\n",
         "spec.yaml:3: duplicate case name 'a' (first: "),
        ("- name: a\n  name: b\n  expect: {}\n", "spec.yaml:2: duplicate key 'name'"),
        ("- name: a\n  expect: {logs: [{level: info}]}\n",
         "spec.yaml:2: cases[0].expect.logs[0] has no 'contains'"),
        ("- name: a\n  expect: {logs: [{contains: x, level: loud}]}\n", "unknown level 'loud'"),
        ("- name: a\n  config: 3\n  expect: {}\n", "spec.yaml:2: cases[0].config must be a string"),
        ("just text\n", "spec.yaml:1: cases must be a list"),
        ("- name: a\n  expect: {metrics: {m: x}}\n",
         "cases[0].expect.metrics.m must be an integer"),
    ],
)  # fmt: skip
def test_errors_name_file_line_and_key(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(SpecError) as caught:
        load_spec(write(tmp_path, text))
    assert message in str(caught.value)
    assert str(caught.value).startswith(str(tmp_path / "spec.yaml"))


def test_missing_and_directory_spec_files(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="no such file"):
        load_spec(tmp_path / "nope.yaml")
    with pytest.raises(SpecError, match="is a directory"):
        load_spec(tmp_path)
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(SpecError, match="cannot read"):
        load_spec(binary)


def test_the_documented_example_parses(tmp_path: Path) -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "check.md").read_text()
    example = doc.split("```yaml\n", 1)[1].split("```", 1)[0]
    spec = load_spec(write(tmp_path, example))
    assert spec.config == b'{"deny":["/admin"]}'
    assert [c.name for c in spec.cases] == [
        "adds the tenant header",
        "admin is denied",
        "bad configuration is refused",
        "a trap is expected",
    ]
    assert spec.cases[0].request.headers[1:] == [("cookie", "a=1"), ("cookie", "b=2")]
    assert spec.cases[1].expect.local_reply == LocalReplyExpect(403, "denied\n", "denied_by_plugin")


def test_the_documented_case_kinds_parse(tmp_path: Path) -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "check.md").read_text()
    example = doc.split("### Beyond one HTTP exchange\n\n```yaml\n", 1)[1].split("```", 1)[0]
    spec = load_spec(write(tmp_path, example))
    assert spec.capabilities == ["proxy_log", "proxy_on_request_headers", "proxy_http_call"]
    tcp, http = spec.cases
    assert tcp.tcp is not None and tcp.tcp.downstream == [b"hello", b" world"]
    assert [r.timeout for r in http.callouts] == [False, True]
    assert [r.status for r in http.grpc] == [None, 14]
    assert (http.ticks, http.benchmark) == (2, 1000)
    assert http.expect.calls[0].cluster == "callout"
