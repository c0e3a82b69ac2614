"""Golden conformance cases: what real Envoy 1.40 did, recorded once, replayed on the host.

Each ``Case`` runs the ``wat/golden`` plugin (``tests/plugins/wat/golden.wat``) in one Envoy
(``--concurrency 1`` or ``2``, wasm log component at info or trace) with one listener, sends its
requests in order, stops Envoy (SIGTERM; killed if a runaway plugin holds a worker) and keeps:

- per request: the status (or ``"no response"``), the response headers in wire order (``date``
  and ``server``, added by the codec after every filter, are left out; the values of
  ``x-envoy-upstream-service-time`` are masked) and the body;
- every ``[wasm]`` log line (level, text; continuation lines such as the in-VM backtrace joined
  with newlines), grouped by thread: ``main`` and ``workers`` (worker blocks sorted, since which
  worker takes a connection is up to the kernel). UUIDs are masked.

``record(case, workdir)`` produces that from Envoy; ``observe_host(case)`` from the reference host;
``tests/conformance/golden/<case>.json`` holds the recording (``test_golden.py``).
"""

from __future__ import annotations

import http.client
import json
import re
import signal
import subprocess
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.support.envoy import envoy_binary
from tests.support.envoy_wasm import HOST, Upstream, WasmFilter, bootstrap, upstream_response
from tests.support.plugins import plugin

GOLDEN_DIR = Path(__file__).parent / "golden"
PLUGIN = "wat/golden"
NAME, ROOT_ID = "golden", "gold"
NO_RESPONSE = "no response"
RESET = "reset"  # the connection closed before a complete response
CLIENT_TIMEOUT = 3.0  # a runaway plugin: no answer within this many seconds
BASE_HEADERS = (("x-b", "2"), ("x-a", "1"), ("accept", "*/*"))
DROPPED = frozenset({"date", "server"})
MASKED = frozenset({"x-envoy-upstream-service-time"})
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_LINE = re.compile(
    r"^\[(?P<ts>[^\]]*)\]\[(?P<tid>\d+)\]\[(?P<level>\w+)\]\[(?P<comp>[^\]]*)\] "
    r"\[(?P<src>[^\]]*)\] (?P<msg>.*)$"
)


@dataclass(frozen=True)
class Request:
    path: str
    headers: tuple[tuple[str, str], ...] = BASE_HEADERS
    wait: float = 0.0  # seconds to let pass before sending it (host: ``advance``)
    body: bytes = b""  # sent as a POST with content-length
    method: str = ""  # default: GET, or POST with a body


@dataclass(frozen=True)
class Case:
    name: str
    kind: str  # trap, properties, local_reply, lifecycle, runaway, trace
    requests: tuple[Request, ...] = ()
    concurrency: int = 1
    failure_policy: str | None = None
    log_level: str = "info"  # the wasm log component's level
    plugin: str = PLUGIN  # tests/plugins/<kind>/<file>
    configuration: str | None = None  # the plugin configuration (StringValue); None: unset
    root_id: str = ROOT_ID

    def spec(self) -> WasmFilter:
        return WasmFilter(
            NAME,
            plugin(self.plugin),
            self.root_id,
            configuration=self.configuration,
            failure_policy=self.failure_policy,
        )


def _reqs(*paths: str) -> tuple[Request, ...]:
    return tuple(Request(p) for p in paths)


PROPS_HEADERS = (*BASE_HEADERS, ("x-dup", "1"), ("X-Mixed", "M"), ("x-dup", "2"))
GRPC_HEADERS = (*BASE_HEADERS, ("content-type", "application/grpc"))
PROBE = "c/probe"  # tests/plugins/c/probe.c: driven by the query string and the configuration
# c/props2: property paths read in one phase (values that change run to run left out)
PROPS2_PATHS = (
    "metadata filter_state source request response connection upstream xds node "
    "xds.listener_direction xds.listener_metadata xds.route_metadata xds.cluster_metadata "
    "xds.upstream_host_metadata xds.filter_chain_name xds.virtual_host_name "
    "upstream.request_attempt_count upstream.num_endpoints upstream.local_address "
    "upstream.locality upstream.tls_version connection.tls_version connection.mtls "
    "connection.requested_server_name source.address.x request.headers.x-dup "
    "request.headers.X-Mixed request.headers.:path request.useragent response.code_details "
    "response.headers.x-upstream response.trailers.x cluster_metadata listener_direction"
)
PROPS2_QUERY = "/?ph={}" + "".join(f"&p={name}" for name in PROPS2_PATHS.split(" "))


def _probe(name: str, kind: str, *requests: Request | str, **options: Any) -> Case:
    reqs = tuple(r if isinstance(r, Request) else Request(r) for r in requests)
    return Case(name, kind, reqs, plugin=PROBE, **options)


# Cases found by the scratch differential runs of session 3 (tests/plugins/c/probe.c).
PROBE_CASES = [
    _probe("trap_probe_request_body_fail_closed", "trap",
           Request("/?tr=rqb", body=b"hello"), Request("/", body=b"again")),
    _probe("trap_probe_request_body_fail_open", "trap",
           Request("/?tr=rqb", body=b"hello"), "/", failure_policy="FAIL_OPEN"),
    _probe("trap_probe_log", "trap", "/?tr=log", "/", log_level="debug"),  # debug: c1 only
    _probe("trap_probe_callout_response", "trap", "/?co=1&tr=cr", "/"),
    _probe("trap_probe_tick", "trap", Request("/", wait=0.6), configuration="tick,trap:tick"),
    _probe("trap_probe_null_function", "trap", "/?tr=rqh&tk=null", "/",
           failure_policy="FAIL_OPEN"),
    _probe("props_probe_phases", "properties", "/x?pp=rqh&a=1", "/x?pp=rsh",
           "/x?ah=1&pp=log"),  # no mo=log: its pair sizes count service-time digits
    _probe("props_probe_callout_configure", "properties", "/?co=1&pp=cr",
           configuration="props:configure"),
    _probe("props_probe_client_headers", "properties",  # headers HCM drops or acts on
           Request("/?pp=rqh", (*BASE_HEADERS, ("Connection", "keep-alive"), ("TE", "gzip"),
                               ("Proxy-Connection", "x"), ("x-envoy-internal", "true"))),
           Request("/?pp=log", (*BASE_HEADERS, ("X-Forwarded-For", "1.2.3.4"),
                               ("X-Forwarded-Proto", "https"), ("Connection", "close"))),
           Request("/?pp=rqh", (("Host", "Other.Test:8080"), ("TE", "trailers")))),
    _probe("local_probe_grpc", "local_reply",
           Request("/?lr=rqh&st=403&hs=0&bd=denied&pp=rsh", GRPC_HEADERS),
           Request("/?lr=rsh&st=500&hs=1&bd=x", GRPC_HEADERS),
           Request("/?lr=rqh&st=403&hs=6&gs=3&bd=a%25b", GRPC_HEADERS),
           Request("/?tr=rqh", GRPC_HEADERS), Request("/", GRPC_HEADERS)),  # a trap, then failed
    _probe("local_probe_headers", "local_reply", "/?lr=rqh&st=304&hs=5&pp=rsh",
           "/?lr=rsb&st=503&bd=down&hs=2", "/?lr=rqh&st=302&hs=7",
           "/?lr=rqh&st=503&bd=down&hs=2", "/?lr=rqh&st=204&bd=abc&hs=0",
           Request("/?lr=rqh&st=200&bd=hello&hs=0", method="HEAD")),
    _probe("local_probe_request_body", "local_reply",
           Request("/?lr=rqb&st=401&hs=1&bd=no", body=b"abc"), "/?co=1&lr=cr&st=401&bd=x&hs=1"),
    _probe("runaway_probe_log", "runaway", "/?lp=log"),
    _probe("runaway_probe_done", "runaway", "/?lp=done"),  # c1: at c2 which worker hangs varies
    _probe("trace_probe_ops", "trace", "/?op=1&co=1&mo=rqh", "/?ah=1&lr=rsh&st=500&bd=b",
           log_level="trace"),
    _probe("lifecycle_probe_c2_post", "lifecycle", Request("/", body=b"abc"), concurrency=2),
    _probe("lifecycle_probe_c3", "lifecycle", "/?op=1", concurrency=3),
    Case("local_relength_framing", "local_reply",  # a body resized under its content-length
         # grow-req last: the bytes past the length stay on the pooled upstream connection
         (Request("/grow-resp"), Request("/grow-req", body=b"abc")),
         plugin="c/relength"),
    Case("props_props2_statuses", "properties",
         (Request(PROPS2_QUERY.format("rqh"), PROPS_HEADERS),
          Request(PROPS2_QUERY.format("log"), PROPS_HEADERS)), plugin="c/props2"),
    # AssemblyScript SDK: a throw logs at critical, calls proc_exit, then traps (no name section:
    # no backtrace)
    Case("trace_as_throw_response", "trace", (Request("/throw-response"), Request("/local")),
         plugin="as/probe", root_id="as_probe", configuration="c", log_level="trace",
         failure_policy="FAIL_OPEN"),
]  # fmt: skip

CASES: dict[str, Case] = {
    c.name: c
    for c in [
        *(
            Case(
                f"trap_{where}_{(policy or 'default').lower()}",
                "trap",
                _reqs(path, "/"),
                failure_policy=policy,
            )
            for where, path in (
                ("request", "/trap"),
                ("response", "/trap-resp"),
                ("response_body_end", "/trap-body"),
            )
            for policy in ("FAIL_CLOSED", "FAIL_OPEN", "FAIL_RELOAD", None)
        ),
        Case(
            "trap_request_fail_reload_after_backoff",
            "trap",
            (Request("/trap"), Request("/", wait=1.8), Request("/")),
            failure_policy="FAIL_RELOAD",
        ),
        Case("props_headers", "properties", (Request("/props", PROPS_HEADERS),)),
        Case("props_twice", "properties", (Request("/props"), Request("/props?x=1"))),
        Case("local_empty_body", "local_reply", _reqs("/local")),
        Case("local_with_body", "local_reply", _reqs("/local-body")),
        Case("local_from_response", "local_reply", _reqs("/local-resp")),
        Case("local_body_no_type", "local_reply", _reqs("/local-plain")),
        Case("lifecycle_c1", "lifecycle", _reqs("/")),
        Case("lifecycle_c2", "lifecycle", concurrency=2),
        Case("lifecycle_c2_request", "lifecycle", _reqs("/"), concurrency=2),
        Case("lifecycle_c3", "lifecycle", concurrency=3),
        Case("runaway_c1", "runaway", _reqs("/loop")),
        Case("trace_request", "trace", _reqs("/"), log_level="trace"),
        Case("trace_trap", "trace", _reqs("/trap"), failure_policy="FAIL_OPEN", log_level="trace"),
        Case("trace_local_reply", "trace", _reqs("/local"), log_level="trace"),
        Case("trace_post", "trace", (Request("/post", body=b"hello body"),), log_level="trace"),
        Case(
            "trace_reload",
            "trace",
            (Request("/trap"), Request("/", wait=1.8)),
            failure_policy="FAIL_RELOAD",
            log_level="trace",
        ),
        *PROBE_CASES,
    ]
}


@dataclass
class Observed:
    """What a case produced (Envoy's recording or the host's run), JSON-ready."""

    responses: list[dict[str, Any]] = field(default_factory=list)
    main: list[list[str]] = field(default_factory=list)  # [level, text] on the main thread
    workers: list[list[list[str]]] = field(default_factory=list)  # one list per worker, sorted

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


SERVICE_TIME = re.compile(r"(x-envoy-upstream-service-time=)\d+")
MAP_DUMP = re.compile(
    r"^(?P<head>.*(?:request|response)\.(?:headers|trailers)(?: rc=\d+)?: )(?P<pairs>.*)$", re.S
)
PORT = re.compile(r"(127\.0\.0\.1:)\d+")
DATE = re.compile(r"(\bdate=)[^|]*")


def mask(text: str) -> str:
    """UUIDs, upstream service times, ports and dates (they differ run to run) masked."""
    text = SERVICE_TIME.sub(r"\1*", UUID.sub("<uuid>", text))
    return DATE.sub(r"\1*", PORT.sub(r"\1*", text))


def comparable(expected: dict[str, Any]) -> dict[str, Any]:
    """``expected`` with the pairs of map-valued property dumps sorted.

    Envoy iterates an ``absl::flat_hash_set`` of the header names (``HeadersWrapper::ListKeys``)
    whose per-table seed changes from request to request (five identical requests in one Envoy
    gave five orders), so only the pairs, not their order, can be compared.
    """

    def fix(entry: list[str]) -> list[str]:
        match = MAP_DUMP.match(entry[1])
        if match is None:
            return entry
        pairs = sorted(p for p in match["pairs"].split("|") if p)
        return [entry[0], match["head"] + "|".join(pairs)]

    out = dict(expected)
    out["main"] = [fix(e) for e in expected["main"]]
    out["workers"] = sorted(
        ([fix(e) for e in block] for block in expected["workers"]), key=json.dumps
    )
    return out


def response_view(status: int | str, headers: list[tuple[str, str]], body: bytes) -> dict:
    """A response as the golden files keep it (wire order; date/server dropped)."""
    kept = []
    for name, value in headers:
        name = name.lower()
        if name in DROPPED:
            continue
        kept.append([name, "*" if name in MASKED else mask(value)])
    return {"status": status, "headers": kept, "body": body.decode("latin-1")}


def group_threads(
    lines: list[tuple[str, str, str]], main_tid: str
) -> tuple[list[list[str]], list[list[list[str]]]]:
    """(thread, level, text) lines -> the main thread's lines and the sorted worker blocks."""
    main: list[list[str]] = []
    workers: dict[str, list[list[str]]] = {}
    for tid, level, text in lines:
        entry = [level, mask(text)]
        if tid == main_tid:
            main.append(entry)
        else:
            workers.setdefault(tid, []).append(entry)
    blocks = sorted(workers.values(), key=lambda block: json.dumps(block))
    return main, blocks


# --------------------------------------------------------------------------- Envoy


def _send(port: int, request: Request) -> dict[str, Any]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=CLIENT_TIMEOUT)
    try:
        method = request.method or ("POST" if request.body else "GET")
        connection.putrequest(method, request.path, skip_host=True, skip_accept_encoding=True)
        connection.putheader("host", HOST)
        for name, value in request.headers:
            connection.putheader(name, value)
        if request.body:
            connection.putheader("content-length", str(len(request.body)))
        connection.endheaders(request.body or None)
        response = connection.getresponse()
        return response_view(response.status, response.getheaders(), response.read())
    except TimeoutError:
        return {"status": NO_RESPONSE, "headers": [], "body": ""}
    except (http.client.RemoteDisconnected, http.client.IncompleteRead, ConnectionResetError):
        return {"status": RESET, "headers": [], "body": ""}
    finally:
        connection.close()


def parse_log(text: str) -> tuple[str, list[tuple[str, str, str]]]:
    """Envoy's log file -> (main thread id, [(thread, level, text)] of [wasm] lines)."""
    main_tid = ""
    out: list[tuple[str, str, str]] = []
    last_wasm = False
    for raw in text.splitlines():
        match = _LINE.match(raw)
        if match is None:
            if last_wasm and out:  # a continuation line (backtrace) of the last wasm line
                tid, level, message = out[-1]
                out[-1] = (tid, level, message + "\n" + raw)
            continue
        if match["comp"] == "main" and not main_tid:
            main_tid = match["tid"]
        last_wasm = match["comp"] == "wasm"
        if last_wasm:
            out.append((match["tid"], match["level"], match["msg"]))
    return main_tid, out


def _wait_for_port(admin_file: Path, process: subprocess.Popen[bytes], timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"envoy exited {process.returncode}")
        if admin_file.exists() and admin_file.read_text().strip():
            admin = admin_file.read_text().strip()
            try:
                with urllib.request.urlopen(f"http://{admin}/listeners?format=json") as r:
                    statuses = json.loads(r.read()).get("listener_statuses", [])
                for status in statuses:
                    if status.get("name") == NAME:
                        return int(status["local_address"]["socket_address"]["port_value"])
            except OSError:
                pass
        time.sleep(0.05)
    raise TimeoutError("envoy did not come up")


def record(case: Case, workdir: Path) -> Observed:
    """Run ``case`` in real Envoy and observe it."""
    workdir.mkdir(parents=True, exist_ok=True)
    with Upstream() as upstream:
        config = bootstrap([case.spec()], upstream.port, upstream.port)
        config["admin"] = {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}}
        config_path, admin_file, log_path = (workdir / n for n in ("e.yaml", "admin", "envoy.log"))
        config_path.write_text(yaml.safe_dump(config))
        command = [
            envoy_binary(), "-c", str(config_path), "--concurrency", str(case.concurrency),
            "--use-dynamic-base-id", "--admin-address-path", str(admin_file),
            "--log-path", str(log_path), "--file-flush-interval-msec", "20",
            "--component-log-level", f"wasm:{case.log_level}",
        ]  # fmt: skip
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            port = _wait_for_port(admin_file, process, 30)
            time.sleep(0.3)  # every worker has started its VM
            responses = []
            for request in case.requests:
                time.sleep(request.wait)
                responses.append(_send(port, request))
            time.sleep(0.2)
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=5 if case.kind != "runaway" else 1)
            except subprocess.TimeoutExpired:  # a runaway plugin never lets its worker stop
                process.kill()
                process.wait()
    main_tid, lines = parse_log(log_path.read_text(errors="replace"))
    main, workers = group_threads(lines, main_tid)
    return Observed(responses, main, workers)


# --------------------------------------------------------------------------- host


def observe_host(case: Case) -> Observed:
    """Run ``case`` in the reference host and observe it like ``record`` does."""
    from wasm_agent.host import harness

    policy = harness.FailurePolicy[case.failure_policy or "FAIL_CLOSED"]
    host = harness.start_plugin(
        plugin(case.plugin), plugin_config=case.configuration or "", failure_policy=policy,
        vm_id=NAME, root_id=case.root_id, plugin_name=NAME,
        log_level=harness.LogLevel[case.log_level.upper()],
        concurrency=case.concurrency, route_timeout_ms=10000,  # the recorded route's timeout
        clusters={"upstream", "callout"}, virtual_host_name="all",  # the recorded bootstrap's
    )  # fmt: skip
    responses = []
    hung = False
    for request in case.requests:
        host.advance(request.wait)
        ex = host.exchange(
            [("host", HOST), (":path", request.path),
             (":method", request.method or ("POST" if request.body else "GET")),
             *((k.lower(), v) for k, v in request.headers)],
            request.body,
            upstream=_upstream,
            callout_responder=_callout,
        )  # fmt: skip
        hung = hung or ex.hung
        client = ex.client
        if ex.reset and (client is None or not client.complete):
            responses.append({"status": RESET, "headers": [], "body": ""})
            continue
        if client is None or client.headers is None:  # runaway, or a stream left paused
            responses.append({"status": NO_RESPONSE, "headers": [], "body": ""})
            continue
        pairs = client.headers.pairs()
        status = int(dict(pairs)[":status"])
        headers = [(k, v) for k, v in pairs if not k.startswith(":")]
        responses.append(response_view(status, headers, bytes(client.body)))
    if not hung:  # a runaway plugin holds its worker: Envoy is killed, nothing shuts down
        host.shutdown()
    lines = [(line.thread, line.level, line.text) for line in host.envoy_log_lines()]
    main, workers = group_threads(lines, "main")
    return Observed(responses, main, workers)


def _upstream(received: Any) -> tuple[Any, ...]:
    """The upstream server's answer (``upstream_response``), as the real one gives it."""
    pairs = received.headers.pairs()
    pseudo = dict(pairs)
    status, headers, chunks = upstream_response(
        pseudo.get(":method", ""), pseudo.get(":path", ""), (), bytes(received.body)
    )
    body = b"".join(chunks)
    return ([(":status", str(status)), *headers, ("content-length", str(len(body)))], chunks)


def _callout(callout: Any) -> tuple[Any, ...]:
    """The ``callout`` cluster's answer: the same server as the upstream (``record``)."""
    pseudo = dict(callout.headers.pairs())
    status, headers, chunks = upstream_response(
        pseudo.get(":method", ""), pseudo.get(":path", ""), (), bytes(callout.body)
    )
    body = b"".join(chunks)
    return ([(":status", str(status)), *headers, ("content-length", str(len(body)))], body)


def golden_path(name: str) -> Path:
    return GOLDEN_DIR / f"{name}.json"


def load_golden(name: str) -> dict[str, Any]:
    return json.loads(golden_path(name).read_text())


def golden_document(case: Case, observed: Observed, envoy_version: str) -> dict[str, Any]:
    return {
        "case": case.name,
        "class": case.kind,
        "recorded_from": envoy_version,
        "plugin": case.plugin,
        **({"configuration": case.configuration} if case.configuration is not None else {}),
        "concurrency": case.concurrency,
        "failure_policy": case.failure_policy,
        "wasm_log_level": case.log_level,
        "requests": [
            {
                "path": r.path,
                "headers": [list(h) for h in r.headers],
                "wait": r.wait,
                "body": r.body.decode(),
                **({"method": r.method} if r.method else {}),
            }
            for r in case.requests
        ],
        "expected": observed.to_json(),
    }


def envoy_version() -> str:
    out = subprocess.run([envoy_binary(), "--version"], capture_output=True, text=True).stdout
    match = re.search(r"/(\d+\.\d+\.\d+)/", out)
    return f"envoy {match.group(1) if match else out.strip()}"
