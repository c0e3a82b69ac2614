"""Docker credential helpers (``credsStore`` / ``credHelpers``) for registry credentials.

A docker config (``$DOCKER_CONFIG/config.json`` or a pull secret's JSON) may name helpers:
``credHelpers`` maps a registry host to a helper name, ``credsStore`` names one for every
registry. The helper is the executable ``docker-credential-<name>`` on ``PATH``; ``get`` reads
the registry's server address on stdin and prints ``{"ServerURL", "Username", "Secret"}``. A
``<token>`` username means the secret is an identity (refresh) token, exchanged at the
registry's token endpoint (:mod:`oci_auth`). Precedence is Docker's: ``credHelpers`` for the
host, then a non-empty ``auths`` entry, then ``credsStore``.

A helper runs with a timeout (then its whole process group is killed), its output is capped,
and neither its output nor its stderr is ever logged or quoted in an error. Results are cached
per (helper, registry) for a bounded time; a caller drops an entry the registry refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import shutil
import signal
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from wasm_agent.core.errors import WasmAgentError
from wasm_agent.fetch.dockerconfig import (
    ANONYMOUS,
    DOCKER_HUB_KEY,
    Credentials,
    DockerConfigError,
    normalize_registry_key,
    parse_docker_config,
)
from wasm_agent.fetch.reference import DOCKER_HUB

log = logging.getLogger(__name__)

HELPER_PREFIX = "docker-credential-"
TOKEN_USERNAME = "<token>"  # the Username a helper prints for an identity token
DEFAULT_TIMEOUT = 10.0  # seconds a helper may run
DEFAULT_TTL = 900.0  # 15 min: below GCR's 1 h access tokens and ECR's 12 h tokens
MAX_OUTPUT = 1 << 20
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
_NOT_FOUND = b"credentials not found"  # docker-credential-helpers' ErrCredentialsNotFound


class CredentialHelperError(WasmAgentError):
    """A helper is missing, hung, failed or printed something unusable.

    The message names the executable and the registry, never the helper's output.
    """


@dataclass(frozen=True)
class HelperConfig:
    """The helper part of a docker config: ``credsStore`` and ``credHelpers`` (by host)."""

    store: str | None = None
    helpers: dict[str, str] = field(default_factory=dict)

    def helper_for(self, registry: str) -> str | None:
        """The ``credHelpers`` entry for ``registry`` (``host[:port]``), if any."""
        return self.helpers.get(normalize_registry_key(registry))


def _helper_name(value: object, where: str) -> str:
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise DockerConfigError(
            f"{where} is not a credential helper name (letters, digits, '.', '_', '-')"
        )
    return value


def parse_helpers(data: bytes) -> HelperConfig:
    """``credsStore`` / ``credHelpers`` of a docker config; :class:`DockerConfigError` if bad.

    Names are restricted to ``[A-Za-z0-9._-]`` so a config can only select an executable
    called ``docker-credential-<name>`` on ``PATH``, never a path.
    """
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise DockerConfigError("not valid JSON") from None
    except RecursionError:
        raise DockerConfigError("JSON nested too deeply") from None
    if not isinstance(doc, dict):
        return HelperConfig()
    store = doc.get("credsStore") or None
    if store is not None:
        store = _helper_name(store, "'credsStore'")
    raw = doc.get("credHelpers") or {}
    if not isinstance(raw, dict):
        raise DockerConfigError("'credHelpers' is not an object")
    helpers = {
        normalize_registry_key(str(host)): _helper_name(name, "a 'credHelpers' value")
        for host, name in raw.items()
    }
    return HelperConfig(store, helpers)


def server_address(registry: str) -> str:
    """What Docker writes on a helper's stdin for ``registry``: the host, or Hub's v1 URL."""
    host = normalize_registry_key(registry)
    return DOCKER_HUB_KEY if host == DOCKER_HUB else host


@dataclass(frozen=True)
class Resolved:
    """Credentials and where they came from: ``helper`` names the helper that gave them."""

    credentials: Credentials
    helper: str | None = None
    server: str = ""
    cached: bool = False


def parse_helper_output(out: bytes, executable: str, registry: str) -> Credentials:
    """Credentials from a helper's ``get`` output (never quoted in errors)."""
    try:
        doc = json.loads(out)
    except (ValueError, UnicodeDecodeError, RecursionError):
        doc = None
    if not isinstance(doc, dict):
        raise CredentialHelperError(
            f"credential helper {executable} for {registry} printed something that is not a "
            'JSON object {"Username", "Secret"}'
        )
    username, secret = doc.get("Username", ""), doc.get("Secret", "")
    if not isinstance(username, str) or not isinstance(secret, str):
        raise CredentialHelperError(
            f"credential helper {executable} for {registry} printed a non-string Username or Secret"
        )
    if not secret:
        return ANONYMOUS
    if username == TOKEN_USERNAME:
        return Credentials(identity_token=secret)
    return Credentials(username=username, password=secret)


@dataclass
class _Entry:
    credentials: Credentials
    expires: float


class CredentialHelpers:
    """Runs helpers and caches their answers per (helper, server) for ``ttl`` seconds."""

    def __init__(
        self,
        env: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._env = env  # None: the process environment at each run
        self._clock = clock
        self._cache: dict[tuple[str, str], _Entry] = {}
        self.runs = 0  # helper executions (for tests and status)

    def forget(self, helper: str, server: str) -> None:
        """Drop a cached answer (the registry refused it)."""
        self._cache.pop((helper, server), None)

    def clear(self) -> None:
        self._cache.clear()

    async def get(
        self,
        helper: str,
        registry: str,
        *,
        ttl: float = DEFAULT_TTL,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> Resolved:
        """Credentials from ``docker-credential-<helper> get`` for ``registry``, cached."""
        server = server_address(registry)
        key = (helper, server)
        entry = self._cache.get(key)
        now = self._clock()
        if entry is not None and entry.expires > now:
            return Resolved(entry.credentials, helper, server, cached=True)
        credentials = await self._run(helper, server, registry, timeout)
        if ttl > 0 and not credentials.empty:
            self._cache[key] = _Entry(credentials, self._clock() + ttl)
        return Resolved(credentials, helper, server, cached=False)

    async def _run(self, helper: str, server: str, registry: str, timeout: float) -> Credentials:
        executable = HELPER_PREFIX + helper
        env = dict(os.environ if self._env is None else self._env)
        path = shutil.which(executable, path=env.get("PATH", os.defpath))
        if path is None:
            raise CredentialHelperError(
                f"credential helper {executable} for {registry} was not found on PATH"
            )
        self.runs += 1
        started = time.monotonic()
        log.info("running credential helper", extra={"helper": executable, "registry": registry})
        try:
            proc = await asyncio.create_subprocess_exec(
                path,
                "get",
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=env,
                start_new_session=True,  # its own process group: a kill reaches its children
            )
        except OSError as exc:
            raise CredentialHelperError(
                f"credential helper {executable} for {registry} could not be started: "
                f"{exc.strerror or type(exc).__name__}"
            ) from None
        try:
            async with asyncio.timeout(timeout):
                out, too_long = await _talk(proc, server.encode())
                code = await proc.wait()
        except TimeoutError:
            raise CredentialHelperError(
                f"credential helper {executable} for {registry} did not answer within "
                f"{timeout:g}s and was killed"
            ) from None
        finally:
            if proc.returncode is None:
                _kill_group(proc.pid)
                await proc.wait()
        log.debug(
            "credential helper finished",
            extra={
                "helper": executable,
                "registry": registry,
                "exit_code": code,
                "duration_s": round(time.monotonic() - started, 3),
            },
        )
        if too_long:
            raise CredentialHelperError(
                f"credential helper {executable} for {registry} printed more than "
                f"{MAX_OUTPUT} bytes"
            )
        if code != 0:
            if _NOT_FOUND in out.lower():
                log.info(
                    "credential helper has no credentials for the registry",
                    extra={"helper": executable, "registry": registry},
                )
                return ANONYMOUS
            how = f"was killed by signal {-code}" if code < 0 else f"exited with status {code}"
            raise CredentialHelperError(f"credential helper {executable} for {registry} {how}")
        return parse_helper_output(out, executable, registry)


async def _talk(proc: asyncio.subprocess.Process, stdin: bytes) -> tuple[bytes, bool]:
    """Write ``stdin``, read stdout (capped) and discard stderr; (stdout, over the cap)."""
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    writer, out_stream, err_stream = proc.stdin, proc.stdout, proc.stderr

    async def feed() -> None:
        try:
            writer.write(stdin)
            await writer.drain()
        except (BrokenPipeError, ConnectionResetError):
            pass  # the helper did not read its input; its exit status tells
        finally:
            writer.close()

    async def read(stream: asyncio.StreamReader, cap: int) -> tuple[bytes, bool]:
        buf, over = bytearray(), False
        while chunk := await stream.read(1 << 16):
            if len(buf) + len(chunk) > cap:
                over = over or cap > 0
                continue  # keep draining so the helper never blocks on a full pipe
            buf += chunk
        return bytes(buf), over

    _, (out, over), _ = await asyncio.gather(
        feed(), read(out_stream, MAX_OUTPUT), read(err_stream, 0)
    )
    return out, over


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


HELPERS = CredentialHelpers()  # the process-wide cache


async def resolve_credentials(
    data: bytes,
    registry: str,
    *,
    helpers: CredentialHelpers | None = None,
    ttl: float = DEFAULT_TTL,
    timeout: float = DEFAULT_TIMEOUT,
) -> Resolved:
    """Credentials for ``registry`` from a docker config's bytes, Docker's precedence.

    Raises :class:`DockerConfigError` (malformed config) or :class:`CredentialHelperError`.
    """
    runner = helpers or HELPERS
    config = parse_helpers(data)
    auths = parse_docker_config(data)
    host = normalize_registry_key(registry)
    helper = config.helper_for(host)
    if helper is not None:
        return await runner.get(helper, host, ttl=ttl, timeout=timeout)
    found = auths.get(host, ANONYMOUS)
    if not found.empty:
        return Resolved(found)
    if config.store is not None:
        return await runner.get(config.store, host, ttl=ttl, timeout=timeout)
    return Resolved(ANONYMOUS)


class CredentialSource:
    """One fetch's credentials: a pull secret's JSON, else ``<docker_config_dir>/config.json``.

    :meth:`for_registry` resolves per registry host (a mirror is looked up under its own host,
    so the upstream's credentials never reach a mirror). :meth:`forget_cached` drops the helper
    answers this fetch used, after the registry refused them.
    """

    def __init__(
        self,
        pull_secret: bytes | None,
        docker_config_dir: Path | None,
        *,
        ttl: float = DEFAULT_TTL,
        timeout: float = DEFAULT_TIMEOUT,
        helpers: CredentialHelpers | None = None,
    ) -> None:
        self.pull_secret = pull_secret
        self.docker_config_dir = docker_config_dir
        self.ttl, self.timeout = ttl, timeout
        self.helpers = helpers or HELPERS
        self.used: list[Resolved] = []

    @property
    def where(self) -> str:
        """What the credentials come from, for messages."""
        return "pull secret" if self.pull_secret is not None else "docker config"

    def _data(self) -> bytes | None:
        if self.pull_secret is not None:
            if not self.pull_secret.strip():
                raise DockerConfigError("pull secret is empty")
            return self.pull_secret
        if self.docker_config_dir is None:
            return None
        path = self.docker_config_dir / "config.json"
        try:
            return path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise DockerConfigError(f"cannot read {path}: {exc.strerror}") from None

    async def for_registry(self, registry: str) -> Credentials:
        """Credentials for ``registry``; raises DockerConfigError / CredentialHelperError."""
        data = self._data()
        if data is None:
            return ANONYMOUS
        try:
            resolved = await resolve_credentials(
                data, registry, helpers=self.helpers, ttl=self.ttl, timeout=self.timeout
            )
        except DockerConfigError as exc:
            if self.pull_secret is None and self.docker_config_dir is not None:
                raise DockerConfigError(
                    f"{self.docker_config_dir / 'config.json'}: {exc}"
                ) from None
            raise
        self.used.append(resolved)
        return resolved.credentials

    def forget_cached(self) -> bool:
        """Forget the helper answers this fetch used (the registry refused them); True if one
        came from the cache, so asking the helper again may help."""
        from_helpers = [r for r in self.used if r.helper is not None]
        for resolved in from_helpers:
            assert resolved.helper is not None
            self.helpers.forget(resolved.helper, resolved.server)
        self.used.clear()
        return any(r.cached for r in from_helpers)
