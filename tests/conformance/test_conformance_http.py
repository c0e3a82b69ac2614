"""HTTP and TCP plugins: real Envoy (the oracle) against the reference host, request by request.

Each scenario is one plugin instance on its own listener (and its own VM) in one Envoy for the
module; its requests run once per Envoy and are checked against explicit expectations
(``test_envoy_*``), then replayed through the reference host, which must observe exactly the same
(``test_host_matches_envoy``).
"""

from __future__ import annotations

import string
from dataclasses import dataclass

import pytest

from tests.support.differential import HostSide, Request, assert_same, envoy_clock, host_tcp
from tests.support.envoy_wasm import EnvoyWasm, Observation, TcpObservation, WasmFilter
from tests.support.plugins import plugin

ALPHABET = string.ascii_lowercase.encode()
LARGE = bytes(range(256)) * 800  # 200 KiB: Envoy hands it over in several chunks
# proxy_set_buffer_bytes(body "middle", start, size, "X"): Envoy's status and resulting body.
SET_BUFFER_SHAPES = {
    "0,0": (0, b"Xmiddle"),  # start 0, size 0: prepend
    "0,6": (0, b"X"),  # start 0, size >= length: replace all
    "0,100": (0, b"X"),
    "6,0": (0, b"middleX"),  # start >= length: append
    "100,0": (0, b"middleX"),
    "7,1": (0, b"middleX"),
    "2,1": (2, b"middle"),  # inside the body: BAD_ARGUMENT
    "2,4": (2, b"middle"),
    "3,0": (2, b"middle"),
}
CUSTOM = ("wasmcustom.conformance_requests", "wasmcustom.conformance_gauge")


@dataclass(frozen=True)
class Scenario:
    plugin: str
    root_id: str
    requests: tuple[Request, ...]
    configuration: str | None = None
    metrics: tuple[str, ...] = ()
    vm_configuration: str | None = None
    environment: tuple[tuple[str, str], ...] = ()

    def spec(self, name: str) -> WasmFilter:
        return WasmFilter(
            name,
            plugin(self.plugin),
            self.root_id,
            configuration=self.configuration,
            vm_configuration=self.vm_configuration,
            environment=self.environment,
        )


SCENARIOS = {
    "headers": Scenario(
        "c/headers",
        "headers",
        configuration="cfg-1",
        metrics=CUSTOM,
        requests=(
            Request(
                "/a/b?x=1",
                headers=(
                    ("x-replace-req", "original"),
                    ("x-remove-req", "bye"),
                    ("x-echo-me", "hi"),
                    ("user-agent", "conformance/1"),
                ),
            ),
            Request("/status/404"),
            Request("/p", method="POST", body=b"payload"),
        ),
    ),
    "body": Scenario(
        "c/body",
        "body",
        requests=(
            Request("/x", method="POST", body=b"hello world"),
            Request("/chunks", method="POST", body=ALPHABET * 40),
            Request("/plain"),
            Request("/large", method="POST", body=LARGE),
        ),
    ),
    "body_stream": Scenario(
        "c/body",
        "body",
        configuration="stream-request",
        requests=(
            Request("/x", method="POST", body=b"hello world"),
            Request("/chunks", method="POST", body=ALPHABET * 40),
        ),
    ),
    "pairs": Scenario(
        "c/pairs",
        "pairs",
        vm_configuration="vm-cfg-1",
        requests=(
            Request("/pairs", headers=(("user-agent", "conformance/1"), ("x-custom", "v"))),
            Request("/pairs/post", method="POST", body=b"abc"),
            Request("/dup", headers=(("x-dup", "a"), ("x-dup", "b"))),
            Request("/original", headers=(("x-rewrite-path", "/rewritten?q=1"),)),
            Request("/status/404"),
        ),
    ),
    "state": Scenario(
        "c/state",
        "state",
        metrics=("wasmcustom.st_requests", "wasmcustom.st_gauge"),
        requests=(Request("/s1"), Request("/s2"), Request("/s3")),
    ),
    "props": Scenario(
        "c/props",
        "props",
        requests=(
            Request("/props?a=b", headers=(("x-echo-me", "echo"), ("referer", "http://r/"))),
        ),
    ),
    "props_body": Scenario(
        "c/props",
        "props",
        requests=(Request("/props/post", method="POST", body=b"twelve bytes"),),
    ),
    "wasi": Scenario("c/wasi", "wasi", requests=(Request("/w1"), Request("/w2"))),
    "wasi_env": Scenario(
        "c/wasi",
        "wasi",
        environment=(("CONFORMANCE_ENV", "from-envoy"),),
        requests=(Request("/e"),),
    ),
    "resize": Scenario(
        "c/resize",
        "resize",
        requests=(
            Request("/r", method="POST", body=b"middle"),
            Request("/r1", method="POST", body=b"x"),
            Request("/chunks", method="POST", body=ALPHABET * 30),
            Request("/get"),
            *(
                Request("/r", method="POST", body=b"middle", headers=(("x-partial", shape),))
                for shape in SET_BUFFER_SHAPES
            ),
        ),
    ),
    "resize_partial": Scenario(
        "c/resize",
        "resize",
        requests=(Request("/r", method="POST", body=b"middle", headers=(("x-partial", "0,1"),)),),
    ),
    "local_reply": Scenario(
        "c/local_reply",
        "local_reply",
        requests=(
            Request("/deny"),
            Request("/ok"),
            Request("/deny/post", method="POST", body=b"data"),
            Request("/status/418"),
            Request("/status/418", method="POST", body=b"late body"),
        ),
    ),
    "callout": Scenario(
        "c/callout",
        "callout",
        requests=(
            Request("/c", headers=(("x-callout", "/auth"),)),
            Request("/c", headers=(("x-callout", "/fail"),)),
            Request("/none"),
            Request("/c", headers=(("x-callout", "/auth"), ("x-callout-cluster", "nowhere"))),
            Request("/c", method="POST", body=b"posted body", headers=(("x-callout", "/p"),)),
        ),
    ),
    # A callout from the response path: the upstream's response (headers, body) waits for it.
    "callout_response": Scenario(
        "c/callout",
        "callout",
        requests=(
            Request("/cr", headers=(("x-callout-response", "/from-response"),)),
            Request(
                "/chunks",
                method="POST",
                body=ALPHABET * 20,
                headers=(("x-callout-response", "/with-body"),),
            ),
        ),
    ),
    # Envoy answers a timed-out callout with its own 504 "upstream request timeout" response.
    "callout_timeout": Scenario(
        "c/callout",
        "callout",
        requests=(Request("/c", headers=(("x-callout", "/slow"), ("x-callout-timeout", "200"))),),
    ),
    "wat": Scenario(
        "wat/add_header", "wat", requests=(Request("/w", headers=(("x-wat-req", "client"),)),)
    ),
    "wat_v010": Scenario(
        "wat/abi_v010", "wat_v010", configuration="v010-config", requests=(Request("/old"),)
    ),
    "lifecycle": Scenario("wat/lifecycle", "lifecycle", requests=(Request("/l"),)),
    "lifecycle_start": Scenario("wat/lifecycle_start", "lifecycle", requests=(Request("/l"),)),
    "as_headers": Scenario(
        "as/index",
        "as_headers",
        configuration="as-config",
        requests=(Request("/as"), Request("/as2")),
    ),
    "as_callout": Scenario(
        "as/callout",
        "as_callout",
        configuration="as-callout-config",
        metrics=("wasmcustom.as_requests", "wasmcustom.as_gauge"),
        requests=(Request("/as-c1"), Request("/as-c2", method="POST", body=b"as body")),
    ),
    # SDK bug: onConfigure passes the configuration size as the r_size pointer, so the host
    # writes the size at address <size>. With this configuration that lands in the heap: the
    # first stream (reading the root configuration twice) works, the next one traps in
    # proxy_on_context_create (Envoy: 200, then 503 for good). Needs the host to allocate
    # exactly like Envoy (same malloc calls, same sizes, same order).
    "as_read_twice": Scenario(
        "as/config_twice",
        "as_config",
        configuration="z" * 7032,
        requests=(Request("/as", headers=(("x-read-twice", "1"),)),) * 3,
    ),
    # The same reads with a short configuration are harmless.
    "as_read_twice_short": Scenario(
        "as/config_twice",
        "as_config",
        configuration="short-config",
        requests=(Request("/as", headers=(("x-read-twice", "1"),)),) * 3,
    ),
}

# Connections, one payload each: plain rewrites, then a trap, then a connection to the failed VM.
TCP_PAYLOADS = {
    "tcp": (b"hello there, Envoy\n", b"second connection\n"),
    "tcp_trap": (b"trap me\n", b"after the trap\n"),
}


class EnvoyHalf:
    """The module's Envoy and the scenario observations it made (each scenario runs once)."""

    def __init__(self, envoy: EnvoyWasm) -> None:
        self.envoy = envoy
        self.observed: dict[str, list[Observation]] = {}
        self._tcp: dict[str, list[TcpObservation]] = {}

    def observe(self, name: str) -> list[Observation]:
        if name not in self.observed:
            scenario = SCENARIOS[name]
            with envoy_clock("http"):
                self.observed[name] = [
                    self.envoy.request(
                        name,
                        r.path,
                        method=r.method,
                        headers=r.headers,
                        body=r.body,
                        metrics=scenario.metrics,
                        settle=0.1,
                    )
                    for r in scenario.requests
                ]
        return self.observed[name]

    def startup_logs(self, name: str) -> set[tuple[str, str]]:
        """The plugin's root-context log lines (VM start, configure; once per VM and thread)."""
        return set(self.envoy.plugin_logs(name, 0, context="root"))

    def tcp(self, name: str) -> list[TcpObservation]:
        """One connection per payload of ``TCP_PAYLOADS[name]``, in order (once per Envoy)."""
        if name not in self._tcp:
            with envoy_clock("http"):
                self._tcp[name] = [
                    self.envoy.tcp_exchange(name, payload) for payload in TCP_PAYLOADS[name]
                ]
        return self._tcp[name]


@pytest.fixture(scope="module")
def envoy_half(tmp_path_factory: pytest.TempPathFactory) -> EnvoyHalf:
    specs = [scenario.spec(name) for name, scenario in SCENARIOS.items()]
    specs += [tcp_spec(name) for name in TCP_PAYLOADS]
    with envoy_clock("http"):  # the plugins are built above, outside the clock
        envoy = EnvoyWasm(specs, tmp_path_factory.mktemp("envoy-http")).__enter__()
    try:
        yield EnvoyHalf(envoy)
    finally:
        envoy.__exit__()


def tcp_spec(name: str) -> WasmFilter:
    return WasmFilter(name, plugin("c/tcp"), "tcp", network=True)


def headers(observation: Observation, side: str = "upstream") -> dict[str, str]:
    pairs = observation.upstream_headers if side == "upstream" else observation.response_headers
    return dict(pairs or ())


# --------------------------------------------------------------------------- Envoy expectations


def test_envoy_headers(envoy_half: EnvoyHalf) -> None:
    first, not_found, post = envoy_half.observe("headers")
    up = headers(first)
    assert up["x-added-req"] == "1"
    assert up["x-replace-req"] == "replaced"
    assert "x-remove-req" not in up
    assert {k: v for k, v in up.items() if k.startswith("x-prop-")} == {
        "x-prop-path": "/a/b?x=1",
        "x-prop-url-path": "/a/b",
        "x-prop-method": "GET",
        "x-prop-host": "conformance.test",
        "x-prop-scheme": "http",
        "x-prop-protocol": "HTTP/1.1",
        "x-prop-query": "x=1",
        "x-prop-useragent": "conformance/1",
        "x-prop-header": "hi",
        "x-prop-plugin-name": "headers",
        "x-prop-root-id": "headers",
        "x-prop-vm-id": "headers",
    }
    down = headers(first, "response")
    assert first.status == 200
    assert down["x-added-resp"] == "1"
    assert down["x-replace-resp"] == "replaced"
    assert "x-remove-resp" not in down
    assert down["x-prop-response-code"] == "200"
    assert first.logs == (("info", "headers: request /a/b?x=1"), ("warning", "headers: response"))
    assert dict(first.metrics) == {CUSTOM[0]: 1, CUSTOM[1]: 42}
    assert not_found.status == 404
    assert headers(not_found, "response")["x-prop-response-code"] == "404"
    assert headers(not_found)["x-prop-url-path"] == "/status/404"
    assert headers(not_found)["x-prop-useragent"] == "<missing 1>"
    assert post.upstream_body == b"payload"
    assert dict(post.metrics) == {CUSTOM[0]: 3, CUSTOM[1]: 42}


def test_envoy_startup_logs(envoy_half: EnvoyHalf) -> None:
    assert envoy_half.startup_logs("headers") == {
        ("info", "headers: vm start"),
        ("info", "headers: configured with 'cfg-1'"),
    }


def test_envoy_body(envoy_half: EnvoyHalf) -> None:
    buffered, streamed, plain, _large = envoy_half.observe("body")
    assert buffered.upstream_body == b"dlrow olleh"  # reversed: needs the whole body
    assert buffered.response_body == b"DLROW OLLEH"  # upstream echoes, response uppercased
    assert buffered.logs == (("info", "body: buffered request body of 11 bytes"),)
    assert streamed.upstream_body == (ALPHABET * 40)[::-1]
    assert streamed.response_body == (ALPHABET * 40)[::-1].upper()
    assert plain.response_body == b"UPSTREAM SAYS HELLO TO /PLAIN\n"
    assert plain.logs == ()


def test_envoy_local_reply(envoy_half: EnvoyHalf) -> None:
    deny, ok, deny_post, late, late_post = envoy_half.observe("local_reply")
    assert deny.status == 403
    assert deny.local_reply
    assert deny.response_body == b"denied by plugin\n"
    assert headers(deny, "response") == {
        "content-type": "text/plain",
        "x-local-reply": "yes",
        # Envoy runs the filter's response path for its own local reply...
        "x-local-reply-seen": "1",
        # ...where the request is still readable, unlike after a forwarded request.
        "x-request-path-in-response": "/deny",
    }
    assert deny.logs == (("info", "local_reply: denying"),)
    assert ok.status == 200 and not ok.local_reply
    assert headers(ok, "response")["x-local-reply-seen"] == "1"
    assert headers(ok, "response")["x-request-path-in-response"] == "<missing 1>"
    assert deny_post.status == 403 and deny_post.upstream_body is None
    # A local reply from the response path replaces the upstream's response.
    for observation in (late, late_post):
        assert not observation.local_reply  # the upstream saw the request
        assert observation.status == 401
        assert observation.response_body == b"denied late\n"
        assert headers(observation, "response") == {"content-type": "text/plain", "x-late": "yes"}
        assert observation.logs == (("info", "local_reply: late deny of the upstream's 418"),)
    assert late_post.upstream_body == b"late body"


def test_envoy_callout(envoy_half: EnvoyHalf) -> None:
    auth, fail, none, nowhere, posted = envoy_half.observe("callout")
    assert headers(auth)["x-callout-status"] == "200"
    assert headers(auth)["x-callout-header"] == "yes"
    assert headers(auth)["x-callout-body"] == "callout-ok /auth"
    assert auth.logs == (("info", "callout: dispatched"), ("info", "callout: resuming"))
    assert auth.status == 200
    assert headers(fail)["x-callout-status"] == "503"
    assert fail.status == 200
    assert "x-callout-status" not in headers(none)
    # An unknown cluster: proxy_http_call answers BAD_ARGUMENT (2) at once.
    assert headers(nowhere)["x-callout-error"] == "2"
    assert nowhere.logs == (("error", "callout: http_call failed with status 2"),)
    # A paused request's body waits and reaches the upstream after the resume.
    assert posted.upstream_body == b"posted body"
    assert headers(posted)["x-callout-status"] == "200"
    seen = [s for s in envoy_half.envoy.callout.seen if s.path in ("/auth", "/fail", "/p")]
    assert [s.path for s in seen] == ["/auth", "/fail", "/p"]  # the refused call never left
    assert ("x-from-plugin", "callout") in seen[0].headers


def test_envoy_callout_timeout(envoy_half: EnvoyHalf) -> None:
    (timed_out,) = envoy_half.observe("callout_timeout")
    assert timed_out.status == 200
    assert headers(timed_out)["x-callout-status"] == "504"
    assert headers(timed_out)["x-callout-body"] == "upstream request timeout"


def test_envoy_body_streamed_request(envoy_half: EnvoyHalf) -> None:
    small, large = envoy_half.observe("body_stream")
    assert small.upstream_body == b"HELLO WORLD"
    assert large.upstream_body == (ALPHABET * 40).upper()
    assert large.response_body == (ALPHABET * 40).upper()


def test_envoy_header_maps_and_log_level(envoy_half: EnvoyHalf) -> None:
    get, post, dup, rewrite, not_found = envoy_half.observe("pairs")
    assert headers(get)["x-request-header-names"] == (
        ":authority,:path,:method,:scheme,user-agent,x-custom,x-forwarded-proto,x-request-id"
    )
    assert headers(post)["x-request-header-names"] == (
        ":authority,:path,:method,:scheme,content-length,x-forwarded-proto,x-request-id"
    )
    assert headers(get, "response")["x-response-header-names"] == (
        ":status,content-type,x-upstream,x-replace-resp,x-remove-resp,content-length,"
        "x-envoy-upstream-service-time"
    )
    assert headers(get)["x-log-level"] == "2"  # info
    assert get.logs == ()  # the debug line is below Envoy's level
    # An added "X-Upper" is stored lowercase and reads back as "x-upper".
    assert headers(get)["x-upper-found"] == "yes"
    assert ("x-upper", "1") in get.upstream_headers
    # A repeated header: proxy_get_header_map_value gives the first value, both stay.
    assert headers(dup)["x-dup-seen"] == "a"
    assert [v for k, v in dup.upstream_headers if k == "x-dup"] == ["a", "b"]
    # Replacing :path after routing changes what the upstream is asked for.
    assert headers(rewrite)[":path"] == "/rewritten?q=1"
    assert rewrite.response_body == b"upstream says hello to /rewritten?q=1\n"
    # Replacing :status changes what the client gets.
    assert not_found.status == 200
    assert headers(not_found, "response")["x-was-404"] == "1"


def test_envoy_metrics_and_shared_data(envoy_half: EnvoyHalf) -> None:
    first, second, third = envoy_half.observe("state")
    assert [headers(o)["x-counter"] for o in (first, second, third)] == ["2", "4", "6"]
    assert [headers(o)["x-gauge"] for o in (first, second, third)] == ["3", "6", "9"]
    assert dict(third.metrics) == {"wasmcustom.st_requests": 6, "wasmcustom.st_gauge": 9}
    # Defining a metric again gives a new id; counters refuse negative increments, histograms
    # refuse increments and reads.
    assert headers(first)["x-same-id"] == "no"
    assert first.logs[:5] == (
        ("info", "state: counter -1 status 2"),
        ("info", "state: gauge -2 status 0"),
        ("info", "state: histogram record status 0"),
        ("info", "state: histogram increment status 2"),
        ("info", "state: histogram get status 2"),
    )
    # Shared data: NOT_FOUND first; cas 0 writes unconditionally (so the "stale" write of 999
    # wins once), later stale writes fail with CAS_MISMATCH (8).
    assert first.logs[5:] == (
        ("info", "state: first get status 1"),
        ("info", "state: set status 0"),
        ("info", "state: stale cas set status 0"),
    )
    assert [headers(o)["x-shared"] for o in (first, second, third)] == ["1", "1000", "1001"]
    assert second.logs[-1] == ("info", "state: stale cas set status 8")


def props(observation: Observation, phase: str) -> dict[str, str]:
    """``path -> result`` of the props plugin's lines for ``phase``."""
    prefix = f"props {phase} "
    lines = [
        message[len(prefix) :] for _, message in observation.logs if message.startswith(prefix)
    ]
    return dict(line.split(" ", 1) for line in lines)


def test_envoy_properties_per_phase(envoy_half: EnvoyHalf) -> None:
    (get,) = envoy_half.observe("props")
    request = props(get, "request_headers")
    assert request["request.path"] == "= /props?a=b"
    assert request["request.url_path"] == "= /props"
    assert request["request.query"] == "= a=b"
    assert request["request.referer"] == "= http://r/"
    assert request["request.headers.x-echo-me"] == "= echo"
    assert request["request.id"] == "size 36"
    assert request["response.code"] == "missing 1"
    assert request["xds.cluster_name"] == "= upstream"
    assert request["plugin_vm_id"] == "= props"
    response = props(get, "response_headers")
    # Once the request went upstream its headers are gone: request.* reads fail.
    assert response["request.path"] == "missing 1"
    assert response["request.protocol"] == "= HTTP/1.1"
    assert response["response.code"] == "size 8"
    assert response["response.code_details"] == "= via_upstream"
    assert response["upstream.address"] == "ip 127.0.0.1"
    assert response["source.address"] == "ip 127.0.0.1"
    assert props(get, "log")["response.headers.x-upstream"] == "= 1"
    assert "request_body" not in {m.split(" ")[1] for _, m in get.logs}  # no body, no call
    (post,) = envoy_half.observe("props_body")
    body = props(post, "request_body")
    assert body["request.path"] == "missing 1"
    assert body["upstream.address"] == "ip 127.0.0.1"


def test_envoy_wasi(envoy_half: EnvoyHalf) -> None:
    first, second = envoy_half.observe("wasi")
    # stdout writes become info lines, stderr writes error lines (trailing newline dropped).
    assert first.logs == (("info", "wasi: stdout /w1"), ("error", "wasi: stderr /w1"))
    assert headers(second)["x-clock-ok"] == "yes"
    assert envoy_half.startup_logs("wasi") == {("info", "wasi: env CONFORMANCE_ENV=(unset)")}
    assert envoy_half.startup_logs("wasi_env") == {("info", "wasi: env CONFORMANCE_ENV=from-envoy")}


def test_envoy_body_resize(envoy_half: EnvoyHalf) -> None:
    middle, single, chunks, get, *shapes = envoy_half.observe("resize")
    assert middle.upstream_body == b"<<middle>>"
    assert middle.response_body == b"<<middle>>[end]"
    assert middle.logs == (("info", "resize: request body now 10"),)
    assert single.upstream_body == b"<<x>>"
    assert chunks.upstream_body == b"<<" + ALPHABET * 30 + b">>"
    assert get.upstream_body == b""
    assert get.response_body == b"upstream says hello to /get\n[end]"
    for (shape, (status, body)), observation in zip(SET_BUFFER_SHAPES.items(), shapes, strict=True):
        assert observation.upstream_body == b"<<" + body + b">>", shape
        assert observation.logs[0] == ("info", f"resize: partial replace status {status}"), shape
    # start 0 with a size inside the body: Envoy drains that much and prepends the data.
    (partial,) = envoy_half.observe("resize_partial")
    assert partial.upstream_body == b"<<Xiddle>>"
    assert partial.logs[0] == ("info", "resize: partial replace status 0")


def test_envoy_large_buffered_body(envoy_half: EnvoyHalf) -> None:
    large = envoy_half.observe("body")[3]
    assert large.upstream_body == LARGE[::-1]
    assert large.logs == (("info", "body: buffered request body of 204800 bytes"),)


def test_envoy_wat(envoy_half: EnvoyHalf) -> None:
    (only,) = envoy_half.observe("wat")
    assert headers(only)["x-wat-req"] == "from-wat"
    assert headers(only, "response")["x-wat"] == "hello"
    assert only.logs == (("info", "wat: response headers"),)


def test_envoy_abi_v010(envoy_half: EnvoyHalf) -> None:
    (only,) = envoy_half.observe("wat_v010")
    assert headers(only)["x-abi"] == "0.1.0"
    assert headers(only)["x-config"] == "v010-config"  # proxy_get_configuration
    assert headers(only, "response")["x-abi-resp"] == "0.1.0"
    assert envoy_half.startup_logs("wat_v010") == {("info", "abi_v010: configured")}


def test_envoy_start_functions(envoy_half: EnvoyHalf) -> None:
    # _initialize, then main if exported (so not _start); _start alone is called.
    assert envoy_half.startup_logs("lifecycle") == {("info", "lifecycle: started 3")}
    assert envoy_half.startup_logs("lifecycle_start") == {("info", "lifecycle: started 4")}


def test_envoy_assemblyscript(envoy_half: EnvoyHalf) -> None:
    first, second = envoy_half.observe("as_headers")
    for observation in (first, second):
        assert observation.status == 200
        assert headers(observation)["x-as-req"] == "1"
        assert headers(observation, "response")["x-as-config"] == "as-config"
        assert observation.logs == (
            ("info", "as_headers: request"),
            ("info", "as_headers: response"),
        )


def test_envoy_assemblyscript_callout_and_metrics(envoy_half: EnvoyHalf) -> None:
    get, post = envoy_half.observe("as_callout")
    for observation in (get, post):
        assert observation.status == 200
        assert headers(observation)["x-as-callout-status"] == "200"
        assert observation.logs == (
            ("info", "as_callout: dispatched 0"),
            ("info", "as_callout: answered 200"),
        )
    assert post.upstream_body == b"as body"
    assert dict(post.metrics) == {"wasmcustom.as_requests": 2, "wasmcustom.as_gauge": 7}
    assert "/as-callout" in [seen.path for seen in envoy_half.envoy.callout.seen]


def test_envoy_assemblyscript_read_twice_bug(envoy_half: EnvoyHalf) -> None:
    observed = envoy_half.observe("as_read_twice")
    assert [o.status for o in observed] == [200, 503, 503]
    assert [o.trap for o in observed] == [
        None,
        "Function: proxy_on_context_create failed: Uncaught RangeError: "
        "Maximum call stack size exceeded",
        None,  # the VM stays failed (fail closed): no new trap
    ]
    short = envoy_half.observe("as_read_twice_short")
    assert [o.status for o in short] == [200, 200, 200]
    assert headers(short[2], "response")["x-as-config"] == "short-config"


def test_envoy_tcp(envoy_half: EnvoyHalf) -> None:
    first, second = envoy_half.tcp("tcp")
    assert first == TcpObservation(
        b"HELLO THERE, ENVOY\n", b"H3LLO TH3R3, 3NVOY\n", (("info", "tcp: new connection"),)
    )
    assert second.upstream_received == b"SECOND CONNECTION\n"


def test_envoy_tcp_trap(envoy_half: EnvoyHalf) -> None:
    trapped, after = envoy_half.tcp("tcp_trap")
    # The trap closes the connection before anything reaches the upstream.
    assert trapped == TcpObservation(
        b"", b"", (("info", "tcp: new connection"), ("warning", "tcp: trapping"))
    )
    # The VM stays failed (fail closed): the next connection is closed unfiltered.
    assert after == TcpObservation(b"", b"", ())


def test_envoy_callout_from_response(envoy_half: EnvoyHalf) -> None:
    plain, with_body = envoy_half.observe("callout_response")
    for observation, path in ((plain, "/from-response"), (with_body, "/with-body")):
        assert observation.status == 200
        response = headers(observation, "response")
        assert response["x-callout-status"] == "200"
        assert response["x-callout-body"] == f"callout-ok {path}"
        assert observation.logs == (
            ("info", "callout: dispatched from the response"),
            ("info", "callout: resuming"),
        )
    assert with_body.response_body == ALPHABET * 20


def test_envoy_vm_configuration(envoy_half: EnvoyHalf) -> None:
    assert envoy_half.startup_logs("pairs") == {("info", "pairs: vm configuration 'vm-cfg-1'")}


# --------------------------------------------------------------------------- host == Envoy


# Scenarios where the host is known to differ from Envoy (name -> reason): run as strict xfail.
HOST_GAPS: dict[str, str] = {}
STARTUP_GAPS: dict[str, str] = {}


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(name, marks=pytest.mark.xfail(reason=HOST_GAPS[name], strict=True))
        if name in HOST_GAPS
        else name
        for name in SCENARIOS
    ],
)
def test_host_matches_envoy(envoy_half: EnvoyHalf, name: str) -> None:
    scenario = SCENARIOS[name]
    envoy = envoy_half.observe(name)
    host = HostSide(scenario.spec(name), metrics=scenario.metrics)
    assert_same(envoy, [host.request(r) for r in scenario.requests])


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(name, marks=pytest.mark.xfail(reason=STARTUP_GAPS[name], strict=True))
        if name in STARTUP_GAPS
        else name
        for name in (
            "headers",
            "pairs",
            "wasi",
            "wasi_env",
            "wat_v010",
            "lifecycle",
            "lifecycle_start",
        )
    ],
)
def test_host_matches_envoy_startup_logs(envoy_half: EnvoyHalf, name: str) -> None:
    host = HostSide(SCENARIOS[name].spec(name))
    started = {(e.envoy_level, e.message) for e in host.host.logs if e.context_id >= 0}
    assert started == envoy_half.startup_logs(name)


@pytest.mark.parametrize("name", list(TCP_PAYLOADS))
def test_host_matches_envoy_tcp(envoy_half: EnvoyHalf, name: str) -> None:
    assert host_tcp(tcp_spec(name), TCP_PAYLOADS[name]) == envoy_half.tcp(name)
