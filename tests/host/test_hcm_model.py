"""What Envoy's HTTP connection manager and router add around the filter, as recorded from
Envoy 1.40 by the scratch differential runs of session 3 (plugin ``tests/plugins/c/probe.c``;
the recorded cases are in ``tests/conformance/golden/*probe*.json``). Each test names the
Envoy observation it checks."""

from __future__ import annotations

import re

from tests.support.plugins import plugin
from wasm_agent.host.harness import FailurePolicy, start_plugin
from wasm_agent.host.messages import LocalResponse, grpc_reply_headers

PROBE = "c/probe"
REQ = {":method": "GET", ":authority": "svc"}


def _ok(received: object) -> tuple[dict[str, str], bytes]:
    return {":status": "200"}, b"ok"


def _messages(host) -> list[str]:  # type: ignore[no-untyped-def]
    return [e.message for e in host.logs]


def _prop(host, name: str) -> str:  # type: ignore[no-untyped-def]
    """The value part of the probe's last ``prop <phase> <name> rc=N: value`` line."""
    lines = [m for m in _messages(host) if re.match(rf"prop \w+ {re.escape(name)} rc=", m)]
    return lines[-1].split(": ", 1)[1]


def test_router_adds_the_expected_timeout_and_hcm_its_response_headers() -> None:
    """Envoy 1.40 (route timeout 10 s): on_log saw ``x-envoy-expected-rq-timeout-ms=10000`` in
    request.headers and ``date``/``server=envoy`` in response.headers; the default route
    timeout is 15 s; 0 adds none."""
    for timeout, expected in ((None, "15000"), (10000, "10000"), (0, None)):
        host = start_plugin(plugin(PROBE), route_timeout_ms=timeout)
        ex = host.exchange({**REQ, ":path": "/?pp=log"}, upstream=_ok)
        request = _prop(host, "request.headers")
        assert (f"x-envoy-expected-rq-timeout-ms={expected}|" in request) is (expected is not None)
        assert ex.upstream is not None and ex.upstream.headers is not None
        seen = ex.upstream.headers.to_dict()
        assert seen.get("x-envoy-expected-rq-timeout-ms") == expected
        response = _prop(host, "response.headers")
        assert "server=envoy|" in response and re.search(r"date=\w{3}, \d\d \w{3} ", response)


def test_front_end_off_adds_nothing() -> None:
    host = start_plugin(plugin(PROBE))
    ex = host.exchange({**REQ, ":path": "/"}, b"", {":status": "200"}, b"x", frontend=False)
    assert ex.client is not None and ex.client.headers is not None
    assert [k for k, _ in ex.client.headers.pairs()] == [":status", "x-later"]


def test_a_reply_before_the_request_ended_closes_the_connection() -> None:
    """Envoy 1.40: a trap in the request body's data frame (end of stream not yet decoded)
    answered 503 with ``connection: close`` before the codec's ``content-length: 0``; a local
    reply at the end-of-stream frame did not close."""
    host = start_plugin(plugin(PROBE), failure_policy=FailurePolicy.FAIL_OPEN)
    ex = host.exchange({**REQ, ":path": "/?tr=rqb", ":method": "POST"}, b"hello")
    assert ex.client is not None and ex.client.headers is not None
    pairs = [(k, v) for k, v in ex.client.headers.pairs() if k not in ("date", "server")]
    assert pairs == [(":status", "503"), ("connection", "close"), ("content-length", "0")]
    host = start_plugin(plugin(PROBE))
    ex = host.exchange({**REQ, ":path": "/?lr=rqb&st=401", ":method": "POST"}, b"abc")
    assert ex.client is not None and ex.client.headers is not None
    assert "connection" not in ex.client.headers.to_dict()


def test_runaway_in_on_log_or_on_done_leaves_the_client_without_an_answer() -> None:
    """Envoy 1.40: a loop in on_log or on_done (they run before the response leaves the write
    buffer) left the client without a response."""
    for phase in ("log", "done"):
        host = start_plugin(plugin(PROBE), fuel=2_000_000)
        ex = host.exchange({**REQ, ":path": f"/?lp={phase}"}, upstream=_ok)
        assert ex.hung and ex.client is None, phase


def test_response_properties_before_the_response() -> None:
    """Envoy 1.40, request headers phase: response.headers and response.trailers are an empty
    map (found), request.total_size counts the visible headers' byteSize;
    upstream.transport_failure_reason is "" once the upstream is chosen; xds.node is found."""
    host = start_plugin(plugin(PROBE))
    host.exchange({**REQ, ":path": "/x?pp=rqh&pv=1"}, upstream=_ok)
    messages = _messages(host)
    assert "prop rqh response.headers rc=0: " in messages
    assert "prop rqh response.trailers rc=0: " in messages
    assert "prop rqh upstream.transport_failure_reason rc=1: " in messages
    assert _prop(host, "xds.node").startswith("2\\x05envoyB")
    total = _prop(host, "request.total_size")
    assert total != "\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00"
    host.exchange({**REQ, ":path": "/x?pp=log"}, upstream=_ok)
    assert "prop log upstream.transport_failure_reason rc=0: " in _messages(host)


def test_grpc_reply_headers() -> None:
    """Envoy 1.40: the plugin's headers first, then content-type, grpc-status (HTTP 403 -> 7)
    and grpc-message (percent-encoded) replacing the plugin's in place; no body."""
    reply = LocalResponse(403, b"a%b\n", [(b"grpc-message", b"m"), (b"x-p", b"1")], "d", -1)
    assert grpc_reply_headers(reply).pairs() == [
        (":status", "200"), ("grpc-message", "a%25b"), ("x-p", "1"),
        ("content-type", "application/grpc"), ("grpc-status", "7"),
    ]  # fmt: skip


def test_plugin_hop_by_hop_response_headers() -> None:
    """Envoy 1.40 (``/?ah=2``): a plugin's ``connection`` is removed, its ``keep-alive`` kept,
    its ``server`` overwritten; without content-length the codec chunks the body."""
    host = start_plugin(plugin(PROBE))
    ex = host.exchange({**REQ, ":path": "/?ah=2"}, upstream=_ok)
    assert ex.client is not None and ex.client.headers is not None
    pairs = ex.client.headers.pairs()
    names = [k for k, _ in pairs]
    assert "connection" not in names and ("keep-alive", "timeout=5") in pairs
    assert ("server", "envoy") in pairs and names[-1] == "transfer-encoding"
    assert dict(pairs)[":status"] == "201"


def test_runaway_in_a_callout_answer_hangs_the_stream() -> None:
    """Envoy 1.40 (``/?co=1&lp=cr``): no response, and Envoy never shuts down cleanly."""
    host = start_plugin(plugin(PROBE), fuel=2_000_000)

    def callout(call: object) -> tuple[dict[str, str], bytes]:
        return {":status": "200"}, b"ok"

    ex = host.exchange({**REQ, ":path": "/?co=1&lp=cr"}, upstream=_ok, callout_responder=callout)
    assert ex.hung and ex.client is None


def test_trap_backtrace_only_when_the_module_names_functions() -> None:
    """Envoy 1.40: an AssemblyScript -O3 module (no name section) traps with the bare
    ``Function: ... failed`` line; a C module (named functions) adds the in-VM backtrace."""
    for module, root, path, named in (("as/probe", "as_probe", "/throw", False),
                                      (PROBE, "", "/?tr=rqh", True)):  # fmt: skip
        host = start_plugin(plugin(module), root_id=root, plugin_config="c")
        host.exchange({**REQ, ":path": path}, upstream=_ok)
        errors = [line.text for line in host.envoy_log_lines() if line.level == "error"]
        assert len(errors) == 1 and errors[0].startswith("Function: proxy_on_request_headers")
        assert ("in-VM backtrace" in errors[0]) is named, module


OPS = "c/stream_ops"


def test_a_second_local_reply_changes_nothing() -> None:
    """Envoy 1.40 (``/local-twice``: 401 "one", then 402 "two"): the client got 401 "one"."""
    host = start_plugin(plugin(OPS))
    ex = host.exchange({**REQ, ":path": "/local-twice"}, upstream=_ok)
    assert ex.client is not None and ex.client.headers is not None
    assert ex.client.headers.to_dict()[":status"] == "401" and bytes(ex.client.body) == b"one"


def test_watermark_holds_data_without_showing_it_again() -> None:
    """Envoy 1.40 (``/body-watermark``: StopIterationAndWatermark on the 6-byte data frame):
    the end-of-stream call saw size 0, and the upstream got all 6 bytes."""
    host = start_plugin(plugin(OPS))
    seen: list[bytes] = []

    def upstream(received: object) -> tuple[dict[str, str], bytes]:
        seen.append(bytes(received.body))  # type: ignore[attr-defined]
        return {":status": "200"}, b""

    host.exchange(
        {**REQ, ":path": "/body-watermark", ":method": "POST"}, b"abcdef", upstream=upstream
    )
    assert [m for m in _messages(host) if m.startswith("rqb")] == ["rqb 6", "rqb 0"]
    assert seen == [b"abcdef"]


def test_close_stream_on_the_request_resets_and_still_logs() -> None:
    """Envoy 1.40 (``/close-req``): proxy_close_stream answered 0, the client's connection was
    reset without a response, and proxy_on_log still ran."""
    host = start_plugin(plugin(OPS))
    ex = host.exchange({**REQ, ":path": "/close-req"}, upstream=_ok)
    assert ex.reset and (ex.client is None or not ex.client.complete)
    assert _messages(host)[-2:] == ["close 0", "log"]


PROPS2 = "c/props2"


def _read(paths: list[str], phase: str) -> dict[str, str]:
    host = start_plugin(plugin(PROPS2), virtual_host_name="all")
    query = "&".join(f"p={p}" for p in paths)
    host.exchange({**REQ, ":path": f"/?ph={phase}&{query}"}, upstream=_ok)
    out = {}
    for message in _messages(host):
        name, _, rest = message.partition(" rc=")
        out[name] = rest.split(" ", 1)[0]
    return out


def test_property_statuses_recorded_from_envoy() -> None:
    """Envoy 1.40 (``c/props2``, bootstrap without metadata): whole attribute maps and
    ``filter_state`` are SERIALIZATION_FAILURE (3), a path below a leaf is NOT_FOUND, the xds
    names and metadata are found (empty), upstream counts exist in every phase, the upstream
    host's metadata fails to serialize once there is one."""
    maps = ["source", "request", "response", "connection", "upstream", "xds", "filter_state"]
    found = ["metadata", "xds.listener_direction", "xds.listener_metadata", "xds.route_metadata",
             "xds.filter_chain_name", "xds.virtual_host_name", "upstream.num_endpoints",
             "upstream.request_attempt_count"]  # fmt: skip
    missing = ["source.address.x", "request.time.x", "node", "upstream.local_address"]
    early = _read([*maps, *found, *missing, "xds.upstream_host_metadata"], "rqh")
    assert {p: early[p] for p in maps} == dict.fromkeys(maps, "3")
    assert {p: early[p] for p in found} == dict.fromkeys(found, "0")
    assert {p: early[p] for p in missing} == dict.fromkeys(missing, "1")
    assert early["xds.upstream_host_metadata"] == "1"
    late_paths = ["upstream.local_address", "upstream.locality", "xds.upstream_host_metadata",
                  "response.backend_latency", "upstream.cx_pool_ready_duration"]  # fmt: skip
    late = _read(late_paths, "log")
    assert late == {
        "upstream.local_address": "0", "upstream.locality": "0",
        "xds.upstream_host_metadata": "3", "response.backend_latency": "0",
        "upstream.cx_pool_ready_duration": "0",
    }  # fmt: skip


def test_request_headers_hcm_drops_or_rewrites() -> None:
    """Envoy 1.40 (``c/probe``, ``/?pp=rqh``/``pp=log`` with these client headers): connection,
    keep-alive, proxy-connection, expect, te other than trailers and every x-envoy-* header
    never reach the filter; the client's x-forwarded-proto sets :scheme, its x-forwarded-for
    sets source.address (port 0); a client's ``connection: close`` closes the response too."""
    host = start_plugin(plugin(PROBE))
    sent = {**REQ, ":path": "/?pp=log", "host": "a", "connection": "close", "keep-alive": "5",
            "proxy-connection": "x", "te": "gzip", "expect": "100-continue",
            "x-envoy-internal": "true", "x-forwarded-proto": "https",
            "x-forwarded-for": "10.1.1.1, 1.2.3.4"}  # fmt: skip
    del sent[":authority"]
    ex = host.exchange(sent, upstream=_ok)
    request = _prop(host, "request.headers")
    for dropped in ("connection", "keep-alive", "proxy-connection", "te", "expect", "x-envoy-i"):
        assert f"|{dropped}" not in f"|{request}", dropped
    assert ":scheme=https|" in request and ":authority=a|" in request
    assert _prop(host, "source.address") == "1.2.3.4:0"
    assert ex.client is not None and ex.client.headers is not None
    assert ex.client.headers.to_dict()["connection"] == "close"


def test_router_refuses_a_header_value_with_a_newline() -> None:
    """Envoy 1.40 (``c/callout`` copies the callout's body, which ends in a newline, into
    x-callout-body): 503 "invalid header value for: x-callout-body", upstream never reached."""
    host = start_plugin(plugin("c/callout"))

    def callout(call: object) -> tuple[dict[str, str], bytes]:
        return {":status": "200"}, b"two\nlines"

    ex = host.exchange({**REQ, ":path": "/", "x-callout": "/c"}, upstream=_ok,
                       callout_responder=callout)  # fmt: skip
    assert ex.upstream is None or ex.upstream.headers is None
    assert ex.client is not None and ex.client.headers is not None
    assert ex.client.headers.to_dict()[":status"] == "503"
    assert bytes(ex.client.body) == b"invalid header value for: x-callout-body"


def test_trace_prints_i64_arguments_as_unsigned_64_bit() -> None:
    """Envoy 1.40 (``c/state`` at trace): ``env.proxy_increment_metric(4, 18446744073709551615)``
    for an increment of -1."""
    from wasm_agent.host.harness import LogLevel

    host = start_plugin(plugin("c/state"), log_level=LogLevel.TRACE)
    host.exchange({**REQ, ":path": "/"}, upstream=_ok)
    traces = [
        line.text for line in host.envoy_log_lines() if "proxy_increment_metric(" in line.text
    ]
    assert any(t.endswith(", 18446744073709551615)") for t in traces), traces


def test_bodies_are_read_as_the_unchanged_content_length_frames_them() -> None:
    """Envoy 1.40 (``c/relength``): a body grown under an unchanged content-length reaches the
    upstream or the client cut to that length; a shrunk one leaves the reader waiting (the
    client got no response)."""
    seen: list[bytes] = []

    def upstream(received: object) -> tuple[dict[str, str], bytes]:
        seen.append(bytes(received.body))  # type: ignore[attr-defined]
        return {":status": "200", "content-length": "5"}, b"hello"

    host = start_plugin(plugin("c/relength"))
    post = {**REQ, ":method": "POST"}
    host.exchange({**post, ":path": "/grow-req"}, b"abc", upstream=upstream)
    assert seen == [b"abc"]
    ex = host.exchange({**post, ":path": "/shrink-req"}, b"abcdef", upstream=upstream)
    assert seen == [b"abc"] and ex.client is None
    ex = host.exchange({**REQ, ":path": "/grow-resp"}, upstream=upstream)
    assert ex.client is not None and bytes(ex.client.body) == b"hello"
    ex = host.exchange({**REQ, ":path": "/shrink-resp"}, upstream=upstream)
    assert ex.client is None


LOG_TRAILERS = """
  (func (export "proxy_on_log") (param i32)
    (call $st (call $proxy_get_header_map_value (i32.const 3) (i32.const 1024) (i32.const 1)
                                               (i32.const 32) (i32.const 36))))
"""


def test_on_log_reads_missing_response_trailers_as_an_empty_map() -> None:
    """Envoy 1.40: a response-trailers lookup in on_log without trailers answered NOT_FOUND
    (the access log gets an empty map), not BAD_ARGUMENT."""
    from tests.host.wat import BASIC
    from tests.host.wat import plugin as wat

    host = start_plugin(wat(BASIC + LOG_TRAILERS, data={1024: "x"}))
    host.exchange({**REQ, ":path": "/"}, upstream=_ok)
    assert host.log_messages()[-1:] == [chr(48 + 1)]
