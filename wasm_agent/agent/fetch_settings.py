"""Fetch settings for the commands, importing the verify-policy parser only when it is used."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from wasm_agent.core.settings import FetchSettings, build_fetch_settings, verify_policy_path


def fetch_settings_from_env(
    env: Mapping[str, str] | None = None, *, verify_policy: str | Path | None = None
) -> FetchSettings:
    """:func:`wasm_agent.fetch.trust_policy.fetch_settings_from_env`, without importing the
    policy parser (cryptography, yaml: about 35 ms) unless a policy is configured, so a warm
    ``prefetch`` stays fast."""
    env = os.environ if env is None else env
    path = verify_policy_path(env, verify_policy)
    if not path:
        return build_fetch_settings(env)
    from wasm_agent.fetch.trust_policy import load_verify_policy

    return build_fetch_settings(env, verify_policy=load_verify_policy(path))
