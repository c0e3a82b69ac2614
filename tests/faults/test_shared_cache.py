"""Fifty agents on one node share one cache directory and all want the same module at once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.faults import assert_cache_clean, short_dir
from tests.support.registry import Registry, unique_repo
from tests.support.wasm import code_module, sha256_hex

pytestmark = [pytest.mark.slow, pytest.mark.registry, pytest.mark.timeout(150)]

ROOT = Path(__file__).resolve().parents[2]
AGENTS = 50


@pytest.fixture(scope="session")
def five_mb_module() -> bytes:
    """A 5 MB module that is mostly code (compiling it takes about as long as a real one)."""
    return code_module(5 * 1024 * 1024, seed=95)


def test_fifty_agents_one_download(
    oci_registry: Registry, oci_pusher, five_mb_module: bytes
) -> None:
    """50 ``wasm-agent prefetch`` processes (the proxy's cache code path) started together on
    one cache directory, all asking the real registry for the same 5 MB module: the registry
    serves the layer exactly once (its access log), every process exits 0 with the same
    module path, and the cache holds that one complete module and nothing partial."""
    repo = unique_repo("faults-50")
    pushed = oci_pusher.push_wasm_artifact(repo, "v1", five_mb_module)
    url = oci_registry.oci_url(repo, "v1")
    sha = sha256_hex(five_mb_module)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "WASM_INSECURE_REGISTRIES": oci_registry.host}
    with short_dir() as work:
        cache = work / "cache"
        argv = [sys.executable, "-m", "wasm_agent", "prefetch", "--cache-dir", str(cache)]
        argv += ["--json", "--sha256", pushed.hex, "--timeout", "90", url]
        procs: list[subprocess.Popen[str]] = []
        try:
            for _ in range(AGENTS):
                procs.append(
                    subprocess.Popen(
                        argv,
                        stdout=subprocess.PIPE,
                        stderr=subprocess.PIPE,
                        text=True,
                        env=env,
                        cwd=work,
                        start_new_session=True,
                    )
                )
            deadline = time.monotonic() + 120
            outputs = [p.communicate(timeout=max(1, deadline - time.monotonic())) for p in procs]
        finally:
            for proc in procs:
                if proc.poll() is None:
                    os.killpg(proc.pid, 9)
                    proc.wait(10)
        codes = [p.returncode for p in procs]
        failed = [err[-600:] for (_, err), code in zip(outputs, codes, strict=True) if code]
        assert codes == [0] * AGENTS, failed[:3]
        results = [json.loads(out)[0] for out, _ in outputs]
        assert {r["path"] for r in results} == {str(cache / "modules" / f"{sha}.wasm")}
        assert {r["sha256"] for r in results} == {sha}
        assert sum(not r["cached"] for r in results) == 1  # one fetched, 49 reused it
        assert oci_registry.count_blob_gets(repo) == 1
        assert assert_cache_clean(cache).keys() == {sha}
