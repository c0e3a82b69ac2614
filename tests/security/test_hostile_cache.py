"""A hostile writer of the cache directory (review 3, 12-B/E/F/I/J): what it plants must neither
hang a command nor move files out of the cache nor choose the code ``run``/``check`` execute.

Every case plants into a real cache filled from a real HTTP server (or by the real CLI) and
checks what must hold: each command finishes (a subprocess timeout would fail the test), the
plant is refused with a clear error or ignored with a warning, ``cache verify`` names it and
exits 1, and nothing outside the cache is touched.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.modserver import ModServer
from tests.support.wasm import padded_module, sha256_hex
from wasm_agent.cache import ModuleCache, ModuleRequest
from wasm_agent.cache.errors import CacheWriteError
from wasm_agent.cache.index import MAX_INDEX_BYTES
from wasm_agent.core.settings import CacheSettings, FetchSettings
from wasm_agent.core.unix_socket import short_path

ROOT = Path(__file__).resolve().parents[2]
A = padded_module(4096, seed=31)
SHA_A = sha256_hex(A)
PLUGIN = """(module
  (import "env" "proxy_log" (func $log (param i32 i32 i32) (result i32)))
  (memory (export "memory") 2)
  (data (i32.const 1040) "hello from plugin-%s")
  (global $heap (mut i32) (i32.const 65536))
  (func (export "proxy_on_memory_allocate") (param $n i32) (result i32)
    (local $p i32)
    (local.set $p (global.get $heap))
    (global.set $heap (i32.add (local.get $p) (local.get $n)))
    (local.get $p))
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (drop (call $log (i32.const 2) (i32.const 1040) (i32.const 19)))
    (i32.const 0)))
"""


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    """The real CLI; ``WASM_AGENT_HOST_CACHE`` unset so the host cache follows --cache-dir."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "WASM_AGENT_HOST_CACHE": ""}
    argv = [sys.executable, "-m", "wasm_agent", *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=90, cwd=ROOT, env=env)


async def filled(cache: ModuleCache, server: ModServer) -> str:
    """Module A fetched into the cache (pinned); its URL."""
    url = server.serve("/a.wasm", A)
    assert (await cache.get(ModuleRequest(url=url, sha256=SHA_A))).sha256 == SHA_A
    return url


def fresh(cache_dir: Path) -> ModuleCache:
    return ModuleCache(CacheSettings(directory=cache_dir), FetchSettings())


# -- 12-I: a FIFO or a huge file planted under a name the cache opens -----------------------


@pytest.mark.timeout(120)
async def test_a_fifo_as_the_index_hangs_nothing(
    cache: ModuleCache, cache_dir: Path, modserver: ModServer
) -> None:
    """Must hold: with a FIFO as ``index.json`` (opening it waited forever for a writer, in
    the proxy on its event loop), a lookup returns at once, ``prefetch`` still serves the
    module and replaces the FIFO, and ``cache ls|verify|prune`` finish; verify names it."""
    url = await filled(cache, modserver)
    index = cache_dir / "index.json"
    index.unlink()
    os.mkfifo(index, 0o444)
    assert fresh(cache_dir).lookup(ModuleRequest(url=url, sha256=SHA_A)) is not None
    verify = cli("cache", "verify", "--cache-dir", str(cache_dir))
    assert verify.returncode == 1, verify.stdout + verify.stderr
    assert f"{index} cannot be read (not a regular file)" in verify.stderr
    for action in (["ls"], ["prune", "--all-unused", "--dry-run"]):
        result = cli("cache", *action, "--cache-dir", str(cache_dir))
        assert result.returncode == 0, result.stderr
    result = cli("prefetch", "--cache-dir", str(cache_dir), "--sha256", SHA_A, url)
    assert result.returncode == 0, result.stderr
    other = modserver.serve("/b.wasm", padded_module(2048, seed=32))
    result = cli("prefetch", "--cache-dir", str(cache_dir), other)  # a write replaces the FIFO
    assert result.returncode == 0, result.stderr
    assert index.is_file() and not index.is_symlink()


async def test_a_huge_index_is_not_read_whole(
    cache: ModuleCache, cache_dir: Path, modserver: ModServer
) -> None:
    """Must hold: an index over the cap is ignored without being read (a sparse file of the
    cap plus one byte) and ``cache verify`` reports it."""
    url = await filled(cache, modserver)
    index = cache_dir / "index.json"
    os.chmod(index, 0o644)
    os.truncate(index, MAX_INDEX_BYTES + 1)
    os.chmod(index, 0o444)
    assert fresh(cache_dir).lookup(ModuleRequest(url=url, sha256=SHA_A)) is not None
    verify = cli("cache", "verify", "--cache-dir", str(cache_dir), "--no-quarantine")
    assert verify.returncode == 1 and "over the 64 MiB limit" in verify.stderr, verify.stderr


@pytest.mark.parametrize(  # a symlink or directory as index.lock refuses the whole cache instead
    ("target", "plant"),
    [
        ("index.lock", "fifo"),
        ("locks", "fifo"),
        ("locks", "symlink"),
        ("locks", "directory"),
        ("locks", "socket"),
    ],
)
async def test_a_planted_lock_file_is_reported_then_replaced_never_followed(
    cache: ModuleCache, cache_dir: Path, modserver: ModServer, tmp_path: Path, target: str,
    plant: str,
) -> None:  # fmt: skip
    """Must hold: a FIFO planted as the index lock, or a FIFO, a symlink or an empty directory
    planted as a download lock, is named by ``cache verify`` (exit 1); the next download
    replaces it with a lock file of its own (no wait on the FIFO, the link's target untouched)
    and succeeds, so the plant cannot deny that module's downloads for good (review 4, 8)."""
    await filled(cache, modserver)
    module = padded_module(2048, seed=33)
    url = modserver.serve("/c.wasm", module)
    path = cache_dir / "index.lock" if target == "index.lock" else cache.layout.lock_path(url)
    path.unlink(missing_ok=True)
    victim = tmp_path / "victim.txt"
    victim.write_text("keep")
    if plant == "fifo":
        os.mkfifo(path, 0o644)
    elif plant == "symlink":
        path.symlink_to(victim)
    elif plant == "socket":  # review 5, F4: opening it fails with ENXIO
        with socket.socket(socket.AF_UNIX) as planted, short_path(path) as name:
            planted.bind(name)
    else:
        path.mkdir()
    verify = cli("cache", "verify", "--cache-dir", str(cache_dir), "--no-quarantine")
    assert verify.returncode == 1, verify.stdout + verify.stderr
    assert f"{path} is not a regular file" in verify.stdout + verify.stderr
    got = await cache.get(ModuleRequest(url=url, sha256=sha256_hex(module)))
    assert got.sha256 == sha256_hex(module)
    assert path.is_file() and not path.is_symlink()
    assert victim.read_text() == "keep" and oct(victim.stat().st_mode & 0o777) == "0o644"
    again = cli("cache", "verify", "--cache-dir", str(cache_dir), "--no-quarantine")
    assert again.returncode == 0, again.stdout + again.stderr


async def test_a_lock_planted_as_a_directory_with_entries_is_named_for_removal(
    cache: ModuleCache, cache_dir: Path, modserver: ModServer
) -> None:
    """A non-empty directory cannot be replaced without deleting what is in it: the download
    fails naming it, and ``cache verify`` says it must be removed by hand (review 5, F4)."""
    await filled(cache, modserver)
    url = modserver.serve("/d.wasm", padded_module(2048, seed=34))
    path = cache.layout.lock_path(url)
    (path / "sub").mkdir(parents=True)
    with pytest.raises(CacheWriteError, match="cannot lock"):
        await cache.get(ModuleRequest(url=url))
    assert (path / "sub").is_dir()
    verify = cli("cache", "verify", "--cache-dir", str(cache_dir), "--no-quarantine")
    assert verify.returncode == 1, verify.stdout + verify.stderr
    assert f"{path} is a directory with entries" in verify.stdout + verify.stderr
    assert "removed by hand" in verify.stdout + verify.stderr


async def test_fifos_planted_among_modules_and_the_compile_config_hang_nothing(
    cache_dir: Path, modserver: ModServer, fetch_settings: FetchSettings
) -> None:
    """Must hold: a FIFO as a module file, as a partial download, or as the compile check's
    wasmtime config neither hangs start-up, ``cache ls`` nor a download (the config FIFO is
    removed and written afresh)."""
    compiled = cache_dir / "compiled"
    for directory in (cache_dir, cache_dir / "modules", compiled):
        directory.mkdir(mode=0o700)
    os.mkfifo(cache_dir / "modules" / f"{'e' * 64}.wasm", 0o444)
    os.mkfifo(cache_dir / "modules" / ".tmp-planted.part", 0o444)
    os.mkfifo(compiled / "wasmtime-cache.toml", 0o644)
    cache = ModuleCache(CacheSettings(directory=cache_dir), fetch_settings)
    try:
        await filled(cache, modserver)
    finally:
        cache.close()
    assert (compiled / "wasmtime-cache.toml").is_file()
    result = cli("cache", "ls", "--cache-dir", str(cache_dir))
    assert result.returncode == 0 and SHA_A[:12] in result.stdout, result.stderr


# -- 12-J: the quarantine directory ---------------------------------------------------------


@pytest.mark.parametrize("plant", ["symlink", "writable"])
async def test_verify_never_moves_a_file_out_through_quarantine(
    cache: ModuleCache, cache_dir: Path, modserver: ModServer, tmp_path: Path, plant: str
) -> None:
    """Must hold: with ``quarantine`` a link out of the cache (or a directory others may
    write), ``cache verify`` reports the corrupt module and the quarantine, exits 1, and
    moves nothing; the module is refetched, never served."""
    url = await filled(cache, modserver)
    module = cache_dir / "modules" / f"{SHA_A}.wasm"
    os.chmod(module, 0o644)
    with module.open("ab") as handle:
        handle.write(b"junk")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    quarantine = cache_dir / "quarantine"
    if plant == "symlink":
        quarantine.symlink_to(elsewhere)
        why = f"{quarantine} is a symlink; the agent never follows a link inside the cache"
    else:
        quarantine.mkdir(mode=0o700)
        os.chmod(quarantine, 0o777)
        why = f"{quarantine} is writable by other users"
    result = cli("cache", "verify", "--cache-dir", str(cache_dir))
    assert result.returncode == 1, result.stdout + result.stderr
    assert why in result.stderr and f"CORRUPT {module}" in result.stderr, result.stderr
    assert list(elsewhere.iterdir()) == [] and module.exists()
    assert "moved to" not in result.stderr
    with pytest.raises(CacheWriteError, match="quarantine"):  # the agent refuses the cache
        fresh(cache_dir).lookup(ModuleRequest(url=url, sha256=SHA_A))


# -- 12-E: verify reads the index against the files -----------------------------------------


async def test_verify_reports_a_corrupt_index_and_entries_without_a_file(
    cache: ModuleCache, cache_dir: Path, modserver: ModServer
) -> None:
    """Must hold: an index entry whose module file is gone, and an index that does not parse,
    are each reported by ``cache verify`` with exit 1 (it said "0 bad", exit 0)."""
    url = await filled(cache, modserver)
    (cache_dir / "modules" / f"{SHA_A}.wasm").unlink()
    result = cli("cache", "verify", "--cache-dir", str(cache_dir))
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"index entry urls[{url}] names module {SHA_A}, which is not in modules/" in (
        result.stderr
    )
    index = cache_dir / "index.json"
    os.chmod(index, 0o644)
    index.write_text("{bad")
    result = cli("cache", "verify", "--cache-dir", str(cache_dir), "--json")
    assert result.returncode == 1 and f"{index} cannot be read" in result.stderr, result.stderr


# -- 12-F: ls and prune refuse an insecure cache --------------------------------------------


@pytest.mark.parametrize("action", ["ls", "prune"])
async def test_ls_and_prune_refuse_an_insecure_cache(
    cache: ModuleCache, cache_dir: Path, modserver: ModServer, tmp_path: Path, action: str
) -> None:
    """Must hold: ``cache ls``/``prune`` refuse (exit 1) a cache others may write, and a
    ``modules`` link to another cache with a hint of its own (never listing its modules)."""
    await filled(cache, modserver)
    os.chmod(cache_dir, 0o777)
    argv = ["cache", action, "--cache-dir"]
    result = cli(*argv, str(cache_dir))
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"{cache_dir} is writable by other users (mode 777); fix it (chmod" in result.stderr
    os.chmod(cache_dir, 0o700)
    other = tmp_path / "other"
    other.mkdir(mode=0o700)
    (other / "modules").symlink_to(cache_dir / "modules")
    result = cli(*argv, str(other), *(["--all-unused"] if action == "prune" else []))
    assert result.returncode == 1 and SHA_A[:12] not in result.stdout, result.stdout
    assert f"{other / 'modules'} is a symlink; the agent never follows a link" in result.stderr
    assert "chmod" not in result.stderr and (cache_dir / "modules" / f"{SHA_A}.wasm").exists()


# -- 12-B: the reference host's compiled code under <cache-dir>/host ------------------------


@pytest.fixture
def plugins(tmp_path: Path) -> tuple[Path, Path]:
    """Two plugins that log which one they are (``run`` prints the log)."""
    paths = []
    for name in ("a", "b"):
        path = tmp_path / f"plugin-{name}.wat"
        path.write_text(PLUGIN % name)
        paths.append(path)
    return paths[0], paths[1]


def compiled_of(host: Path, before: set[Path]) -> Path:
    [made] = set(host.glob("*.cwasm")) - before
    return made


def test_planted_compiled_code_never_runs(tmp_path: Path, plugins: tuple[Path, Path]) -> None:
    """Must hold (the reviewer's experiment): ``run``/``check`` refuse a --cache-dir others
    may write (exit 1, nothing created in it) so B's compiled code planted under A's name is
    never loaded; a host/ that is a link is refused; a planted file others may write is
    removed and A compiled again. host/ is created 0700."""
    plugin_a, plugin_b = plugins
    cache = tmp_path / "cache"
    assert "hello from plugin-a" in cli("run", str(plugin_a), "--cache-dir", str(cache)).stdout
    host = cache / "host"
    assert host.stat().st_mode & 0o777 == 0o700
    compiled_a = compiled_of(host, set())
    assert "hello from plugin-b" in cli("run", str(plugin_b), "--cache-dir", str(cache)).stdout
    compiled_b = compiled_of(host, {compiled_a})
    shutil.copyfile(compiled_b, compiled_a)  # B's machine code under A's name
    os.chmod(cache, 0o777)
    for command in ("run", "check"):
        result = cli(command, str(plugin_a), "--cache-dir", str(cache))
        assert result.returncode == 1, result.stdout + result.stderr
        assert f"{cache} is writable by other users" in result.stderr
        assert result.stderr.startswith(f"wasm-agent {command}: "), result.stderr
        assert "hello from plugin-b" not in result.stdout
    os.chmod(cache, 0o700)
    os.chmod(compiled_a, 0o666)  # a file others may write: never loaded
    result = cli("run", str(plugin_a), "--cache-dir", str(cache))
    assert result.returncode == 0 and "hello from plugin-a" in result.stdout, result.stderr
    assert compiled_a.read_bytes() != compiled_b.read_bytes()  # compiled again, by us
    outside = tmp_path / "outside"
    shutil.move(host, outside)
    host.symlink_to(outside)
    result = cli("run", str(plugin_a), "--cache-dir", str(cache))
    assert result.returncode == 1 and f"{host} is a symlink" in result.stderr, result.stderr
    world = tmp_path / "world"
    world.mkdir(mode=0o777)
    os.chmod(world, 0o777)
    result = cli("check", str(plugin_a), "--cache-dir", str(world))
    assert result.returncode == 1 and "writable by other users" in result.stderr
    assert not (world / "host").exists()


# -- review 4: a huge sparse module file, an index nested too deep --------------------------


def cli_env(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """:func:`cli` with extra environment variables."""
    full = {**os.environ, "PYTHONPATH": str(ROOT), "WASM_AGENT_HOST_CACHE": "", **env}
    argv = [sys.executable, "-m", "wasm_agent", *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=90, cwd=ROOT, env=full)


@pytest.mark.timeout(180)
async def test_a_huge_file_under_a_module_name_is_never_read(
    cache: ModuleCache, cache_dir: Path, modserver: ModServer
) -> None:
    """Must hold: a 64 GiB sparse file planted as a cached module (hashing it took minutes, on
    the proxy's event loop) is refused unread, larger than any module accepted: ``prefetch``
    downloads the module again at once and ``cache verify`` names the file (exit 1)."""
    url = await filled(cache, modserver)
    module = cache_dir / "modules" / f"{SHA_A}.wasm"
    module.unlink()
    with open(module, "wb") as planted:
        planted.truncate(64 * 2**30)
    result = cli("prefetch", url, "--sha256", SHA_A, "--cache-dir", str(cache_dir))
    assert result.returncode == 0, result.stderr
    assert module.read_bytes() == A  # fetched again, in place of the plant
    assert modserver.count("/a.wasm") == 2
    module.unlink()
    with open(module, "wb") as planted:
        planted.truncate(64 * 2**30)
    limit = {"ISTIO_WASM_MAX_BINARY_SIZE_BYTES": str(1 << 20)}
    result = cli_env(limit, "cache", "verify", "--cache-dir", str(cache_dir))
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"than any module accepted ({1 << 20} bytes)" in result.stdout + result.stderr


async def test_an_index_nested_too_deep_is_ignored_with_a_warning(
    cache: ModuleCache, cache_dir: Path, modserver: ModServer
) -> None:
    """Must hold: an ``index.json`` of 100,000 nested arrays (a RecursionError in the JSON
    parser) is ignored with a warning like any unreadable index: ``prefetch`` succeeds, ``cache
    verify`` names it (exit 1); no traceback."""
    url = await filled(cache, modserver)
    index = cache_dir / "index.json"
    os.chmod(index, 0o644)
    index.write_text("[" * 100_000)
    result = cli("prefetch", url, "--sha256", SHA_A, "--cache-dir", str(cache_dir))
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    index.write_text("[" * 100_000)
    result = cli("cache", "verify", "--cache-dir", str(cache_dir))
    assert result.returncode == 1 and f"{index} cannot be read" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
