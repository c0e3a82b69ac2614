"""Fetch settings for the commands, importing the verify-policy parser only when it is used."""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

from wasm_agent.core import config
from wasm_agent.core.paths import existing_directory, flag_name
from wasm_agent.core.settings import FetchSettings, build_fetch_settings, verify_policy_path

FETCH_TIMEOUT = 300.0


def fetch_settings_from_env(
    env: Mapping[str, str] | None = None,
    *,
    verify_policy: str | Path | None = None,
    flags: argparse.Namespace | None = None,
) -> FetchSettings:
    """:func:`wasm_agent.fetch.trust_policy.fetch_settings_from_env`, without importing the
    policy parser (cryptography, yaml: about 35 ms) unless a policy is configured, so a warm
    ``prefetch`` stays fast. ``flags``: the parsed ``config.REGISTRY`` flags, which win."""
    env = os.environ if env is None else env
    path = verify_policy_path(env, verify_policy)
    if not path:
        return with_registry_flags(build_fetch_settings(env), flags)
    from wasm_agent.fetch.trust_policy import load_verify_policy

    settings = build_fetch_settings(env, verify_policy=load_verify_policy(path))
    return with_registry_flags(settings, flags)


def with_registry_flags(settings: FetchSettings, flags: argparse.Namespace | None) -> FetchSettings:
    """Apply ``--registry-config-dir`` and the credential helper flags (when parsed).

    A named registry hosts directory must exist: missing or not a directory raises
    :class:`~wasm_agent.core.errors.UsageError` naming it (exit 2), before any fetch.
    """
    if flags is None or not hasattr(flags, "registry_config_dir"):
        return settings
    directory = flags.registry_config_dir
    if directory:
        variable = "WASM_AGENT_REGISTRY_CONFIG_DIR"
        name = flag_name("--registry-config-dir", variable, directory, os.environ.get(variable))
        existing_directory(name, directory)
    return replace(
        settings,
        registry_config_dir=Path(directory) if directory else None,
        credential_helper_ttl=flags.credential_helper_ttl,
        credential_helper_timeout=flags.credential_helper_timeout,
    )


def fetch_timeout(raw: str) -> float:
    """``--timeout``: a duration like every other duration flag (``30s``, ``500ms``, ``5m``;
    bare numbers are seconds), finite; else argparse exits 2. Zero passes here and each command
    refuses it ("--timeout must be positive", exit 2)."""
    try:
        value = config.duration(raw)
    except config.Invalid as error:
        raise argparse.ArgumentTypeError(f"invalid value {raw!r}: expected {error}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"invalid value {raw!r}: expected a finite duration")
    return value


def add_remote_module_flags(parser: argparse.ArgumentParser, noun: str = "MODULE") -> None:
    """The flags of ``prefetch``, ``check`` and ``run`` for fetching a remote module:
    ``--sha256``, ``--pull-secret``, ``--timeout`` and ``--insecure-registry``."""
    add = parser.add_argument
    add("--sha256", metavar="HEX", help=f"expected sha256 (one {noun} only)")
    add("--pull-secret", type=Path, metavar="FILE",
        help="registry credentials, a .dockerconfigjson file (OCI only)")  # fmt: skip
    add("--timeout", type=fetch_timeout, default=FETCH_TIMEOUT, metavar="DURATION",
        help="deadline for each module's whole fetch: 30s, 500ms, 5m, bare seconds "
             "(default 5m)")  # fmt: skip
    add("--insecure-registry", action="append", default=[], metavar="HOST",
        help="allow plain HTTP / unverified TLS to this registry ('*' for all); "
             "repeatable")  # fmt: skip
