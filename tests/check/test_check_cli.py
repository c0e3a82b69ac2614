"""``wasm-agent check`` as a real process: exit codes, the three formats, bad input, manifests."""

from __future__ import annotations

import json
import time
from pathlib import Path
from xml.etree import ElementTree as ET

import pytest

from tests.check.helpers import AS_INDEX, C_HEADERS, module_path, proxy_wat, run_cli
from tests.support.modserver import ModServer
from tests.support.plugins import plugin
from tests.support.wasm import sha256_hex

SPEC = """\
- name: adds a header
  expect:
    upstream: {headers: {x-added-req: "1"}}
- name: wrong status
  expect:
    response: {status: 418}
"""


@pytest.fixture
def server():
    with ModServer() as srv:
        yield srv


def no_traceback(result) -> None:
    assert "Traceback" not in result.stderr + result.stdout


def test_help_lists_the_flags() -> None:
    result = run_cli("--help")
    assert result.returncode == 0
    for flag in ("--config", "--spec", "--format", "--envoy-abi", "-f", "--root-id",
                 "--pull-secret", "--cache-dir", "--insecure-registry", "--sha256"):  # fmt: skip
        assert flag in result.stdout


def test_passing_module_exits_0_with_one_line_per_check() -> None:
    result = run_cli(str(plugin(C_HEADERS)), "--config", '{"a":1}')
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].endswith("[ABI 0.2.1, http filter]")
    assert any(line.strip().startswith("PASS  compat.imports") for line in lines)
    assert lines[-1] == "1 module, 0 failed; 13 checks: 13 passed, 0 failed, 0 warnings, 0 skipped"


def test_one_failing_module_makes_exit_1(tmp_path: Path) -> None:
    bad = module_path(tmp_path, proxy_wat(abi=""))
    result = run_cli(str(plugin(C_HEADERS)), str(bad))
    assert result.returncode == 1
    assert "FAIL  compat.abi_version  Missing or unknown Proxy-Wasm ABI version" in result.stdout
    assert "2 modules, 1 failed" in result.stdout


def test_config_from_a_file_and_envoy_abi(tmp_path: Path) -> None:
    config = tmp_path / "config.txt"
    config.write_text("cfg")
    as_plugin = str(plugin(AS_INDEX))
    ok = run_cli(as_plugin, "--config", f"@{config}", "--root-id", "as_headers")
    assert ok.returncode == 0, ok.stdout
    old = run_cli(as_plugin, "--config", f"@{config}", "--root-id", "as_headers",
                  "--envoy-abi", "0.1.0")  # fmt: skip
    assert old.returncode == 1
    assert "newer than the target Envoy's 0.1.0" in old.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "give at least one MODULE or -f FILE"),
        (("m.wasm", "--config", "@/nonexistent/cfg"), "--config: cannot read /nonexistent/cfg"),
        (("a.wasm", "b.wasm", "--sha256", "ab" * 32), "--sha256 applies to exactly one MODULE"),
        (("m.wasm", "--sha256", "xyz"), "not a sha256 hex digest"),
        (("ftp://h/m.wasm",), "unsupported scheme 'ftp'"),
        (("m.wasm", "--format", "xml"), "invalid choice: 'xml'"),
        (("m.wasm", "--envoy-abi", "0.3.0"), "invalid choice: '0.3.0'"),
        (("m.wasm", "--spec", "/nonexistent/spec.yaml"), "/nonexistent/spec.yaml: no such file"),
    ],
)
def test_usage_errors_exit_2(args: tuple[str, ...], message: str) -> None:
    result = run_cli(*args)
    assert result.returncode == 2
    assert message in result.stderr
    no_traceback(result)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("- name: a\n  expect:\n    upstream: {hedaers: {}}\n",
         "spec.yaml:3: unknown key 'hedaers' in cases[0].expect.upstream"),
        ("- name: a\n  expect: {\n", "spec.yaml:3:1: invalid YAML"),
    ],
)  # fmt: skip
def test_bad_spec_file_exits_2_naming_file_line_and_key(
    tmp_path: Path, text: str, message: str
) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(text)
    result = run_cli(str(plugin(C_HEADERS)), "--spec", str(spec))
    assert result.returncode == 2
    assert f"wasm-agent check: error: {tmp_path}/{message}" in result.stderr
    no_traceback(result)


def test_bad_modules_exit_1_with_clear_messages(tmp_path: Path, server: ModServer) -> None:
    empty = tmp_path / "empty.wasm"
    empty.write_bytes(b"")
    text = tmp_path / "text.wasm"
    text.write_text("hello")
    huge = tmp_path / "huge.wasm"
    with open(huge, "wb") as handle:  # sparse: 300 MB without writing them
        handle.truncate(300 * 1000 * 1000)
    missing_url = server.fail("/missing.wasm", 404)
    started = time.monotonic()
    result = run_cli(
        str(tmp_path / "nope.wasm"), str(tmp_path), str(empty), str(text), str(huge),
        missing_url, "--cache-dir", str(tmp_path / "cache"), "--format", "json",
    )  # fmt: skip
    assert time.monotonic() - started < 20
    assert result.returncode == 1, result.stderr
    no_traceback(result)
    doc = json.loads(result.stdout)
    first = [m["checks"][0] for m in doc["modules"]]
    assert [(c["section"], c["name"], c["status"]) for c in first] == [
        ("input", "read", "fail"),
        ("input", "read", "fail"),
        ("input", "read", "fail"),
        ("structure", "format", "fail"),
        ("input", "read", "fail"),
        ("input", "fetch", "fail"),
    ]
    assert first[0]["message"].endswith("nope.wasm: no such file")
    assert first[1]["message"].endswith("is a directory, not a Wasm module")
    assert first[2]["message"].endswith("empty.wasm: empty file (0 bytes), not a Wasm module")
    assert "no \\0asm magic number" in first[3]["message"]
    assert "300000000 bytes, over the 268435456-byte limit" in first[4]["message"]
    assert first[5]["message"].startswith(f"cannot fetch {missing_url}:")
    assert "404" in first[5]["message"]


def test_size_cap_follows_the_istio_variable(tmp_path: Path) -> None:
    path = plugin(C_HEADERS)
    result = run_cli(str(path), env={"ISTIO_WASM_MAX_BINARY_SIZE_BYTES": "1000"})
    assert result.returncode == 1
    assert "over the 1000-byte limit (ISTIO_WASM_MAX_BINARY_SIZE_BYTES)" in result.stdout


def test_sha256_is_verified_for_local_modules() -> None:
    path = plugin(C_HEADERS)
    good = run_cli(str(path), "--sha256", sha256_hex(path.read_bytes()))
    assert good.returncode == 0
    bad = run_cli(str(path), "--sha256", "0" * 64)
    assert bad.returncode == 1
    assert f"which does not match {'0' * 64}" in bad.stdout


def test_json_schema(tmp_path: Path) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC)
    result = run_cli(str(plugin(C_HEADERS)), "--spec", str(spec), "--format", "json")
    assert result.returncode == 1
    doc = json.loads(result.stdout)
    assert set(doc) == {"schema_version", "passed", "summary", "modules"}
    assert doc["schema_version"] == 1 and doc["passed"] is False
    assert doc["summary"] == {"modules": 1, "modules_failed": 1, "checks": 15, "passed": 14,
                              "failed": 1, "warnings": 0, "skipped": 0}  # fmt: skip
    module = doc["modules"][0]
    assert set(module) == {
        "module", "url", "plugin", "origin", "passed", "size", "sha256", "oci_digest",
        "abi_version", "kind", "duration_ms", "checks",
    }  # fmt: skip
    assert module["sha256"] == sha256_hex(plugin(C_HEADERS).read_bytes())
    assert (module["abi_version"], module["kind"], module["url"]) == ("0.2.1", "http", None)
    for check in module["checks"]:
        assert set(check) == {"section", "name", "status", "message", "detail_lines", "details",
                              "duration_ms", "location"}  # fmt: skip
    failed = [c for c in module["checks"] if c["status"] == "fail"]
    assert [(c["section"], c["name"]) for c in failed] == [("spec", "wrong status")]
    assert failed[0]["location"] == f"{spec}:4"
    assert failed[0]["detail_lines"] == ["response status: expected 418, got 200"]


def test_junit_parses_and_counts(tmp_path: Path) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC)
    bad = module_path(tmp_path, proxy_wat('(func (export "_initialize") unreachable)'), "bad.wasm")
    result = run_cli(str(plugin(C_HEADERS)), str(bad), "--spec", str(spec), "--format", "junit")
    assert result.returncode == 1 and result.stdout.strip(), result.stderr[-3000:]
    root = ET.fromstring(result.stdout)
    assert root.tag == "testsuites"
    suites = root.findall("testsuite")
    assert len(suites) == 2
    total = sum(int(s.get("tests")) for s in suites)
    assert int(root.get("tests")) == total == len(root.findall(".//testcase"))
    failures = root.findall(".//testcase/failure")
    assert int(root.get("failures")) == len(failures) == 2
    assert int(root.get("skipped")) == len(root.findall(".//testcase/skipped"))
    case = next(c for c in suites[0].iter("testcase") if c.get("name") == "wrong status")
    assert case.get("classname").endswith(".spec")
    assert (case.get("file"), case.get("line")) == (str(spec), "4")
    assert case.find("failure").get("message") == "response status: expected 418, got 200"
    start = next(
        c for c in suites[1].iter("testcase")
        if c.get("name") == "start" and c.get("classname").endswith(".load")
    )  # fmt: skip
    assert "Function: _initialize failed" in start.find("failure").text


def test_github_annotations(tmp_path: Path) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC)
    env = {"GITHUB_ACTIONS": "true"}
    text = run_cli(str(plugin(C_HEADERS)), "--spec", str(spec), env=env)
    errors = [line for line in text.stdout.splitlines() if line.startswith("::error ")]
    assert errors == [
        f"::error title=wasm-agent check%3A spec.wrong status,file={spec},line=4::"
        f"{plugin(C_HEADERS)}: response status: expected 418, got 200%0A"
        "response status: expected 418, got 200"
    ]
    as_json = run_cli(str(plugin(C_HEADERS)), "--spec", str(spec), "--format", "json", env=env)
    json.loads(as_json.stdout)  # annotations go to stderr, the JSON stays parseable
    assert "::error title=wasm-agent check%3A spec.wrong status" in as_json.stderr
    quiet = run_cli(str(plugin(C_HEADERS)), "--spec", str(spec))
    assert "::error" not in quiet.stdout + quiet.stderr


MANIFESTS = """\
apiVersion: extensions.istio.io/v1alpha1
kind: WasmPlugin
metadata: {{name: as-headers, namespace: default}}
spec:
  url: {http_url}
  sha256: {sha}
  pluginName: as_headers
  pluginConfig:
    greeting: hello
---
apiVersion: extensions.istio.io/v1alpha1
kind: WasmPlugin
metadata: {{name: local}}
spec:
  url: file://{local}
---
apiVersion: extensions.istio.io/v1alpha1
kind: WasmPlugin
metadata: {{name: from-oci}}
spec:
  url: {oci_ref}
"""


def test_wasmplugin_manifests(
    tmp_path: Path,
    server: ModServer,
    oci_registry,
    oci_pusher,
) -> None:
    as_data = plugin(AS_INDEX).read_bytes()
    c_data = plugin(C_HEADERS).read_bytes()
    pushed = oci_pusher.push_wasm_artifact("check/plugin", "v1", c_data)
    manifest = tmp_path / "plugins.yaml"
    manifest.write_text(MANIFESTS.format(
        http_url=server.serve("/as.wasm", as_data), sha=sha256_hex(as_data),
        local=plugin(C_HEADERS), oci_ref=f"{oci_registry.host}/check/plugin:v1",
    ))  # fmt: skip
    spec = tmp_path / "spec.yaml"
    spec.write_text("- name: configured\n  expect: {response: {status: 200}}\n")
    args = ("-f", str(manifest), "--cache-dir", str(tmp_path / "cache"), "--format", "json",
            "--insecure-registry", oci_registry.host)  # fmt: skip
    result = run_cli(*args)
    assert result.returncode == 0, result.stdout + result.stderr
    modules = json.loads(result.stdout)["modules"]
    assert [m["plugin"] for m in modules] == ["as-headers", "local", "from-oci"]
    assert modules[0]["origin"] == f"{manifest}:1"
    assert modules[0]["sha256"] == sha256_hex(as_data)
    configure = next(c for c in modules[0]["checks"] if c["name"] == "on_configure")
    assert configure["message"].endswith("a 20-byte configuration")  # {"greeting":"hello"}
    assert modules[1]["url"] is None and modules[1]["sha256"] == sha256_hex(c_data)
    assert modules[2]["oci_digest"] == pushed.digest
    fetch = next(c for c in modules[2]["checks"] if c["name"] == "fetch")
    assert fetch["status"] == "pass"
    assert (
        pushed.digest in next(c for c in modules[2]["checks"] if c["name"] == "format")["message"]
    )
    again = run_cli(*args)  # second run: served from the cache
    assert "from the cache" in json.dumps(json.loads(again.stdout)["modules"][2]["checks"][0])


def test_wasmplugin_type_must_match_the_callbacks(tmp_path: Path) -> None:
    manifest = tmp_path / "plugins.yaml"
    manifest.write_text(
        f"kind: WasmPlugin\nmetadata: {{name: tcp-as-http}}\nspec:\n  url: {plugin('c/tcp')}\n"
        f"---\nkind: WasmPlugin\nmetadata: {{name: tcp}}\n"
        f"spec:\n  url: {plugin('c/tcp')}\n  type: NETWORK\n"
    )
    result = run_cli("-f", str(manifest), "--format", "json")
    assert result.returncode == 1
    modules = json.loads(result.stdout)["modules"]
    checks = [next(c for c in m["checks"] if c["name"] == "plugin_type") for m in modules]
    assert [c["status"] for c in checks] == ["fail", "pass"]
    assert checks[0]["message"] == (
        "spec.type HTTP, but the module exports no http callbacks (it is network): "
        "Envoy would never call it"
    )


def test_bad_manifest_exits_2(tmp_path: Path) -> None:
    manifest = tmp_path / "plugins.yaml"
    manifest.write_text("kind: WasmPlugin\nspec: {}\n")
    result = run_cli("-f", str(manifest))
    assert result.returncode == 2
    assert "plugins.yaml:1: WasmPlugin '' has no spec.url" in result.stderr


def test_allow_capability_enforces_envoys_allow_list() -> None:
    """``--allow-capability`` lists the imports outside the allow-list and exits 1."""
    golden = str(plugin("wat/golden"))
    allowed = ("proxy_log", "proxy_on_context_create", "proxy_on_vm_start", "proxy_on_configure",
               "proxy_on_request_headers", "proxy_on_memory_allocate",
               "proxy_get_header_map_value")  # fmt: skip
    flags = [word for name in allowed for word in ("--allow-capability", name)]
    result = run_cli(golden, *flags, "--format", "json")
    assert result.returncode == 1, result.stdout + result.stderr
    [report] = json.loads(result.stdout)["modules"]
    [caps] = [
        c for c in report["checks"] if (c["section"], c["name"]) == ("compat", "capabilities")
    ]
    assert caps["status"] == "fail"
    assert "proxy_send_local_response" in caps["details"]["not_allowed"]
    assert "--allow-capability" in run_cli("--help").stdout
