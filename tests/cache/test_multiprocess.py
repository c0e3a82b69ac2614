"""Several real processes sharing one cache directory; crashes at the worst moments."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import time
from pathlib import Path

from tests.cache.helpers import REPO, module_files, prefetch_cmd, run_prefetch
from tests.support.modserver import ModServer
from tests.support.wasm import code_module, minimal_module, padded_module, sha256_hex


def _start(cache_dir: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        prefetch_cmd(cache_dir, "--json", *args),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        start_new_session=True,  # so a kill reaches the compile worker too
    )


def _wait_for(condition, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.01)


def test_two_processes_one_download(cache_dir: Path, modserver: ModServer) -> None:
    data = padded_module(64 * 1024, seed=11)
    url = modserver.slow("/m.wasm", data, chunk=8192, delay=0.05)  # ~0.4 s in flight
    first, second = _start(cache_dir, url), _start(cache_dir, url)
    outs = [p.communicate(timeout=60) for p in (first, second)]
    assert [p.returncode for p in (first, second)] == [0, 0], outs
    results = [json.loads(out)[0] for out, _ in outs]
    assert modserver.count("/m.wasm") == 1
    assert {r["sha256"] for r in results} == {sha256_hex(data)}
    assert len({r["path"] for r in results}) == 1
    assert sorted(r["cached"] for r in results) == [False, True]  # the waiter reused it


def test_kill_mid_download_leaves_nothing_used(cache_dir: Path, modserver: ModServer) -> None:
    data = padded_module(256 * 1024, seed=12)
    url = modserver.slow("/m.wasm", data, chunk=4096, delay=0.05)  # ~3 s
    child = _start(cache_dir, url)
    _wait_for(lambda: modserver.count("/m.wasm") == 1)
    time.sleep(0.3)  # body half-way
    os.killpg(child.pid, signal.SIGKILL)
    child.wait(10)
    assert not [p for p in module_files(cache_dir) if p.suffix == ".wasm"]
    modserver.serve("/m.wasm", data)
    rerun = run_prefetch(cache_dir, url, "--sha256", sha256_hex(data))
    assert rerun.returncode == 0, rerun.stderr
    assert [p.name for p in module_files(cache_dir)] == [f"{sha256_hex(data)}.wasm"]


def test_kill_during_compile_leaves_a_temp_never_used(
    cache_dir: Path, modserver: ModServer
) -> None:
    data = code_module(1024 * 1024, seed=13)  # compiles for ~0.5 s
    url = modserver.serve("/big.wasm", data)
    child = _start(cache_dir, url)
    _wait_for(lambda: any(p.name.startswith(".tmp-") for p in module_files(cache_dir)))
    os.killpg(child.pid, signal.SIGKILL)
    child.wait(10)
    leftovers = module_files(cache_dir)
    assert leftovers and all(p.name.startswith(".tmp-") for p in leftovers)
    # a later run never takes the temp file for a module: it fetches again and cleans up
    rerun = run_prefetch(cache_dir, url, "--sha256", sha256_hex(data))
    assert rerun.returncode == 0, rerun.stderr
    assert modserver.count("/big.wasm") == 2
    assert [p.name for p in module_files(cache_dir)] == [f"{sha256_hex(data)}.wasm"]


def test_index_shared_and_updated_by_concurrent_processes(
    cache_dir: Path, tmp_path: Path, modserver: ModServer
) -> None:
    data = minimal_module()
    url = modserver.serve("/shared.wasm", data)
    assert run_prefetch(cache_dir, url).returncode == 0
    # another process knows the URL's checksum from the index: no request, no sha needed
    again = run_prefetch(cache_dir, url, "--json")
    assert json.loads(again.stdout)[0]["cached"] is True
    assert modserver.count("/shared.wasm") == 1
    # four processes each recording ten URLs at once: no record is lost
    sources = []
    for i in range(40):
        path = tmp_path / f"src/{i}.wasm"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(data)
        sources.append(str(path))
    procs = [_start(cache_dir, *sources[k::4]) for k in range(4)]
    for proc in procs:
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
    urls = json.loads((cache_dir / "index.json").read_text())["urls"]
    assert {Path(s).as_uri() for s in sources} | {url} == set(urls)


def _limit_file_size() -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (32 * 1024, 32 * 1024))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)


def test_write_failure_is_clear_and_leaves_nothing(cache_dir: Path, modserver: ModServer) -> None:
    data = padded_module(128 * 1024, seed=14)  # over the 32 KiB file size limit
    url = modserver.serve("/m.wasm", data)
    result = run_prefetch(cache_dir, url, preexec_fn=_limit_file_size)
    assert result.returncode == 1
    assert "cannot write to" in result.stderr and "File too large" in result.stderr
    assert module_files(cache_dir) == []
