"""Every gate a downloaded module passes, in this order, before the cache may store it.

1. checksum: the expected sha256 (OCI: the manifest digest) against what was fetched;
2. sha of bytes: the fetcher's reported sha256 against the bytes themselves;
3. magic: the bytes start with the Wasm magic number;
4. signature: the cosign signature the verify policy asks for (OCI only; checked on the
   manifest digest before any layer is downloaded, so :mod:`wasm_agent.fetch.oci` calls it
   between resolving and downloading);
5. compile: a wasmtime (Cranelift) compile in a worker subprocess, without optimisation passes
   (the cache calls it on the temp file; ``compile_worker.py`` says why).

Gates 1-3 run in :func:`wasm_agent.fetch.dispatch.fetch_module` for every scheme.

The compile runs in a child process (``compile_worker.py``) with a wall-clock limit, an
address-space limit and a CPU-time limit, so a hostile or huge module can neither stall the
event loop nor grow the agent's memory. wasmtime's compiled-artifact cache under
``<cache dir>/compiled`` makes a module compile once across runs and processes.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from wasm_agent.core.settings import FetchSettings
from wasm_agent.fetch.errors import ChecksumMismatch, FetchError, InvalidModule
from wasm_agent.fetch.model import WASM_MAGIC, FetchedModule
from wasm_agent.fetch.reference import OciReference

if TYPE_CHECKING:
    from wasm_agent.fetch.oci import _RegistrySession
    from wasm_agent.fetch.trust_policy import Rule

WORKER = Path(__file__).with_name("compile_worker.py")
CACHE_CONFIG_NAME = "wasmtime-cache.toml"
OPT_LEVELS = ("none", "speed", "speed_and_size")  # Cranelift's optimisation levels


def verify_fetched(fetched: FetchedModule, url: str, expected: str | None) -> None:
    """Gates 1-3: the checksum, the sha256 of the bytes and the Wasm magic number."""
    if expected is not None and fetched.checksum != expected:
        raise ChecksumMismatch(
            url, f"module has checksum {fetched.checksum}, which does not match {expected}"
        )
    if hashlib.sha256(fetched.data).hexdigest() != fetched.sha256:
        raise FetchError(url, "fetcher reported a sha256 that does not match the bytes")
    if len(fetched.data) < 8 or fetched.data[:4] != WASM_MAGIC:
        raise InvalidModule(url, "not a Wasm binary (no \\0asm magic number)")


def signature_rule(settings: FetchSettings, url: str, ref: OciReference) -> Rule | None:
    """Gate 4, before the pull: the verify policy's rule for ``ref`` (None: no policy)."""
    if settings.verify_policy is None:  # cosign signatures (docs/signing.md)
        return None
    from wasm_agent.fetch import cosign  # noqa: PLC0415 - cryptography + yaml, only with a policy

    return cosign.rule_for(settings.verify_policy, url, ref)


async def verify_signature(
    session: _RegistrySession, digest: str, rule: Rule | None
) -> tuple[str, ...]:
    """Gate 4, before any layer is downloaded: the fingerprints of the keys that verified."""
    if rule is None or not rule.required:
        return ()
    from wasm_agent.fetch import cosign  # noqa: PLC0415 - cryptography + yaml, only with a policy

    return await cosign.verify(session, digest, rule)


@dataclass(frozen=True)
class ValidateSettings:
    """Limits of one compile; ``compiled_cache_dir`` None disables the artifact cache."""

    compiled_cache_dir: Path | None = None
    time_limit: float = 120.0
    memory_limit: int = 4 * 1024**3  # address space; wasmtime reserves far more than it uses
    opt_level: str = "none"  # Cranelift's; "speed" is wasmtime's default (for comparisons)

    def __post_init__(self) -> None:
        if self.opt_level not in OPT_LEVELS:
            choices = ", ".join(OPT_LEVELS)
            raise ValueError(f"opt_level must be one of {choices}: {self.opt_level!r}")


def cache_config(directory: Path) -> Path:
    """Write (once) the wasmtime cache TOML pointing at ``directory``; return its path."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = directory / CACHE_CONFIG_NAME
    text = f"[cache]\ndirectory = {json.dumps(str(directory / 'artifacts'))}\n"
    try:
        if path.read_text() == text:
            return path
    except OSError:
        pass
    tmp = directory / f".{CACHE_CONFIG_NAME}.{os.getpid()}"
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


async def validate_module(path: Path, settings: ValidateSettings | None = None) -> None:
    """Gate 5: compile ``path`` with wasmtime in a limited subprocess (:class:`InvalidModule`)."""
    import asyncio  # noqa: PLC0415 - keeps warm `prefetch` < 100 ms (docs/design.md, Layers)

    settings = settings or ValidateSettings()
    toml = ""
    if settings.compiled_cache_dir is not None:
        try:
            toml = str(cache_config(settings.compiled_cache_dir))
        except OSError:
            toml = ""  # compile without the artifact cache rather than fail
    cpu = int(settings.time_limit * (os.cpu_count() or 1)) + 1
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-I",
        str(WORKER),
        str(path),
        toml,
        str(settings.memory_limit),
        str(cpu),
        settings.opt_level,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(settings.time_limit):
            _, err = await process.communicate()
    except BaseException as error:  # timeout or cancellation: never leave the worker behind
        if process.returncode is None:
            process.kill()
            await asyncio.shield(process.wait())
        if isinstance(error, TimeoutError):
            raise InvalidModule(
                str(path), f"compiling took longer than {settings.time_limit:g}s"
            ) from None
        raise
    if process.returncode == 0:
        return
    reason = _reason(process.returncode, err.decode(errors="replace"), settings.memory_limit)
    raise InvalidModule(str(path), reason)


def _reason(returncode: int | None, stderr: str, memory_limit: int) -> str:
    lines = [line for line in stderr.strip().splitlines() if line.startswith("error: ")]
    if lines:
        return lines[-1].removeprefix("error: ")
    if "memory allocation of" in stderr:  # Rust's out-of-memory abort inside wasmtime
        return f"compiling the module exceeded the memory limit ({memory_limit >> 20} MiB)"
    if returncode is not None and returncode < 0:
        name = signal.Signals(-returncode).name
        return f"compile worker killed by {name} (memory or CPU limit exceeded?)"
    tail = stderr.strip().splitlines()[-1:] or [f"exit status {returncode}"]
    return f"compile worker failed: {tail[0]}"
