"""Inputs every command treats the same way: pull secrets, the host's compile cache, proxy
variables, and the flags named in library messages.

The exit-status rule (``cli.EXIT_RULE``): a file that configures the command (``--pull-secret``,
``--config @FILE``, ``--spec``, ``-f``, TLS and token files) that is missing, unreadable or
malformed is a usage error (exit 2); a module that cannot be read, fetched or loaded is the
operation failing (exit 1).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import stat
from collections.abc import Mapping
from pathlib import Path

from wasm_agent.core import config
from wasm_agent.core.errors import UsageError, WasmAgentError

log = logging.getLogger("wasm_agent.agent")

PROXY_VARIABLES = ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY")
_INSECURE_HINT = re.compile(r"list (?P<host>\S+ )?in WASM_INSECURE_REGISTRIES")
_warned_proxy = False


def read_pull_secret(path: Path | str) -> bytes:
    """The bytes of a ``.dockerconfigjson`` file, checked to parse; else :class:`UsageError`."""
    from wasm_agent.fetch.credential_helpers import parse_helpers
    from wasm_agent.fetch.dockerconfig import DockerConfigError, parse_docker_config

    try:
        data = Path(path).read_bytes()
    except IsADirectoryError:
        raise UsageError(f"--pull-secret: cannot read {path}: is a directory") from None
    except OSError as error:
        reason = "no such file" if isinstance(error, FileNotFoundError) else error.strerror
        raise UsageError(f"--pull-secret: cannot read {path}: {reason}") from None
    if not data.strip():
        raise UsageError(f"--pull-secret: {path}: empty file, not a .dockerconfigjson")
    try:
        parse_docker_config(data)
        parse_helpers(data)  # a credsStore / credHelpers name that can never be run
    except DockerConfigError as error:  # its message never quotes the secret
        raise UsageError(f"--pull-secret: {path}: malformed .dockerconfigjson: {error}") from None
    return data


class NotWasmText(WasmAgentError):
    """A ``.wat`` module that does not compile; the message names the file and the error."""


def is_wasm_text(name: str | Path, data: bytes) -> bool:
    """True for a ``.wat`` file, or text that starts like a WebAssembly text module."""
    if str(name).lower().endswith(".wat"):
        return True
    return not data.startswith(b"\0asm") and data.lstrip()[:7] in (b"(module", b";; ", b"(;")


def compile_wat(name: str | Path, data: bytes) -> bytes:
    """The binary module of WebAssembly text ``data``; raises :class:`NotWasmText`."""
    import wasmtime

    try:
        return bytes(wasmtime.wat2wasm(data.decode("utf-8")))
    except (UnicodeDecodeError, wasmtime.WasmtimeError) as error:
        lines = str(error).strip().splitlines() or [type(error).__name__]
        raise NotWasmText(f"{name}: not valid WebAssembly text: {lines[0]}") from None


def host_cache_dir(cache_dir: str | Path | None, env: Mapping[str, str] | None = None) -> Path:
    """Where the reference host keeps compiled modules for ``run`` and ``check``.

    ``WASM_AGENT_HOST_CACHE``, else ``<--cache-dir>/host``, else ``~/.cache/wasm-agent/host``
    when the home directory exists; with no home directory, a temporary directory removed at
    exit, or no disk cache at all when none can be made (a missing ``$HOME`` is never created).

    The directory holds wasmtime-serialized machine code, which the host loads as is, so it
    is made 0700 and refused (:class:`~wasm_agent.cache.integrity.InsecureCache`, which the
    commands report with exit 1) when it, or the
    ``--cache-dir`` holding it, is a link, not a directory, writable by group or others, or
    owned by another user than us or root; an entry in it that is not a regular file of ours
    that only we may write is removed (the host compiles the module again).
    """
    env = os.environ if env is None else env
    named = config.values(config.HOST, env)["host_cache"]
    if named:
        return _secured(Path(named).expanduser(), None)
    if cache_dir:
        root = Path(cache_dir).expanduser()
        return _secured(root / "host", root)
    home = env.get("HOME") or str(Path.home())
    if Path(home).is_dir():
        return _secured(Path(home) / ".cache" / "wasm-agent" / "host", None)
    import atexit  # rare: imported here, so a warm prefetch never pays for them
    import shutil
    import tempfile

    try:
        scratch = tempfile.mkdtemp(prefix="wasm-agent-host-")
    except OSError:  # no writable temporary directory: a path nothing can be created under,
        return Path(os.devnull) / "wasm-agent-host"  # so the host compiles without a disk cache
    atexit.register(shutil.rmtree, scratch, True)
    return Path(scratch)


def _secured(host: Path, cache_root: Path | None) -> Path:
    """``host`` created 0700 and checked (see :func:`host_cache_dir`); ``cache_root``: the
    ``--cache-dir`` it lives in, checked as every cache command checks it."""
    from wasm_agent.cache.integrity import check_error, check_path, check_tree
    from wasm_agent.cache.layout import CacheLayout

    layout = CacheLayout(cache_root if cache_root is not None else host)
    if cache_root is not None:
        check_tree(layout)  # InsecureCache; covers <cache-dir>/host (lstat: never a link)
    with contextlib.suppress(OSError):  # read-only: the host compiles without a disk cache
        if cache_root is not None and not cache_root.exists():
            cache_root.mkdir(mode=0o700, parents=True)
        host.mkdir(mode=0o700, parents=True)
        os.chmod(host, 0o700)  # mkdir's mode is filtered by the umask
    if cache_root is None:
        check_path(layout, host, directory=True)  # the root of its own layout: stat, not lstat
    elif check_path(layout, host, directory=True) is None:
        return host
    try:
        names = os.listdir(host)
    except OSError:
        return host
    for name in names:
        path = host / name
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            continue
        if stat.S_ISREG(st.st_mode) and not st.st_mode & 0o022 and st.st_uid in (os.geteuid(), 0):
            continue
        log.warning("removing a compiled module the host did not write", extra={"path": str(path)})
        try:
            os.unlink(path)
        except OSError:
            raise check_error(layout, path, "is not a regular file of ours") from None
    return host


def warn_ignored_proxy_variables(env: Mapping[str, str] | None = None) -> None:
    """Warn once per process that ``HTTP(S)_PROXY``/``ALL_PROXY`` are not used."""
    global _warned_proxy
    env = os.environ if env is None else env
    found = [n for n in PROXY_VARIABLES if env.get(n) or env.get(n.lower())]
    if not found or _warned_proxy:
        return
    _warned_proxy = True
    log.warning(
        "proxy variables are ignored: modules and registries are reached directly",
        extra={"variables": ",".join(found)},
    )


def with_flag_hints(message: str) -> str:
    """``message`` naming ``--insecure-registry`` where a library names only the variable (for
    the commands that have the flag: ``prefetch``, ``check``, ``run``)."""
    return _INSECURE_HINT.sub(
        r"pass --insecure-registry HOST or list \g<host>in WASM_INSECURE_REGISTRIES", message
    )
