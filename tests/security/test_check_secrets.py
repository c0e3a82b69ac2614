"""``wasm-agent check`` never prints a URL's user-info or query token, in any output format.

Once a finding (review 3, 12-A): ``check`` echoed the module URL as given, password and
``?token=`` included, in text, ``--format json``, ``--format junit``, ``-f`` manifests and the
GitHub ``::error`` annotations. Here the real CLI checks modules served by a real HTTP module
server (tests/support/modserver) under credentialed URLs, both fetched (passing) and missing
(failing fetch), given as MODULE and in a WasmPlugin manifest, with ``GITHUB_ACTIONS=true``;
every byte of stdout and stderr is searched for the planted values.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from xml.etree import ElementTree as ET

import pytest

from tests.support.modserver import ModServer
from tests.support.plugins_wat import header_plugin

ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "PASSW0RD-c9Lm"
TOKEN = "SECRET-tok-8Wq2"
USERINFO = f"alice:{PASSWORD}"
PLANTED = (PASSWORD, TOKEN, USERINFO)
SPEC = "- name: wrong status\n  expect:\n    response: {status: 418}\n"  # fails: annotations


def leaks(text: str) -> list[str]:
    """Planted secrets found in ``text`` (plain, URL-quoted or JSON-escaped)."""
    forms = {s: {s, s.replace(":", "%3A"), json.dumps(s)[1:-1]} for s in PLANTED}
    return [s for s, spellings in forms.items() if any(form in text for form in spellings)]


def check_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "GITHUB_ACTIONS": "true"}
    argv = [sys.executable, "-m", "wasm_agent", "check", "--log-level", "debug", *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=cwd, env=env)


def secret_url(server: ModServer, path: str) -> str:
    return server.url(path, userinfo=USERINFO) + f"?token={TOKEN}"


@pytest.fixture
def served(tmp_path: Path) -> dict[str, object]:
    """A module server with one module, credentialed URLs to it and to a missing path, a
    WasmPlugin manifest naming both, and a spec with one failing case."""
    with ModServer() as server:
        server.serve("/ok.wasm", header_plugin("v1"))
        manifest = tmp_path / "plugins.yaml"
        manifest.write_text(
            "apiVersion: extensions.istio.io/v1alpha1\nkind: WasmPlugin\n"
            f"metadata: {{name: fetched}}\nspec:\n  url: '{secret_url(server, '/ok.wasm')}'\n"
            "---\napiVersion: extensions.istio.io/v1alpha1\nkind: WasmPlugin\n"
            f"metadata: {{name: missing}}\nspec:\n  url: '{secret_url(server, '/nope.wasm')}'\n"
        )
        spec = tmp_path / "spec.yaml"
        spec.write_text(SPEC)
        yield {"server": server, "manifest": manifest, "spec": spec}


@pytest.mark.parametrize("fmt", ["text", "json", "junit"])
def test_check_prints_no_url_secret(served: dict, tmp_path: Path, fmt: str) -> None:
    """Passing and failing fetches, as MODULE and via ``-f``, ``::error`` annotations on."""
    server = served["server"]
    assert isinstance(server, ModServer)
    ok, missing = secret_url(server, "/ok.wasm"), secret_url(server, "/nope.wasm")
    result = check_cli(ok, missing, "-f", str(served["manifest"]), "--spec", str(served["spec"]),
                       "--format", fmt, "--cache-dir", str(tmp_path / "cache"),
                       cwd=tmp_path)  # fmt: skip
    out = result.stdout + result.stderr
    assert result.returncode == 1, out  # the missing module and the failing spec case
    assert "Traceback" not in out
    assert server.count("/ok.wasm") >= 1 and server.count("/nope.wasm") >= 1  # really fetched
    assert not leaks(out), f"secrets leaked in --format {fmt}:\n{out}"
    shown = server.url("/ok.wasm") + "?<redacted>"
    assert "::error " in out  # the annotations were written, and are clean
    if fmt == "json":
        modules = json.loads(result.stdout)["modules"]
        gone = server.url("/nope.wasm") + "?<redacted>"
        assert [m["module"] for m in modules[:2]] == [shown, gone]
        assert [m["plugin"] for m in modules[2:]] == ["fetched", "missing"]
        assert [m["checks"][0]["status"] for m in modules] == ["pass", "fail", "pass", "fail"]
        assert all(m["url"] == m["module"] for m in modules)
    elif fmt == "junit":
        suites = ET.fromstring(result.stdout).findall("testsuite")
        assert [s.get("name") for s in suites] == [shown, shown.replace("ok", "nope"),
                                                   "fetched", "missing"]  # fmt: skip
        case = suites[0].find("testcase")
        assert case is not None and case.get("classname") == "wasm-agent.ok_wasm.input"
    else:
        assert f"WasmPlugin fetched ({shown}, {served['manifest']}:1)" in result.stdout


def test_usage_errors_print_no_url_secret(tmp_path: Path) -> None:
    """A refused MODULE (unsupported scheme, exit 2) is named without its secrets."""
    url = f"ftp://{USERINFO}@127.0.0.1:9/m.wasm?token={TOKEN}"
    result = check_cli(url, cwd=tmp_path)
    assert result.returncode == 2
    assert "unsupported scheme 'ftp'" in result.stderr
    assert not leaks(result.stdout + result.stderr), result.stderr
