"""Settings objects, built once from the environment (Istio's variable names) and flags.

The variables, their parsers and defaults are the rows of :mod:`wasm_agent.core.config`;
everything else receives these objects and reads no ``os.environ`` for these values.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol

from wasm_agent.core import config
from wasm_agent.core.config import IPNetwork, parse_duration
from wasm_agent.core.errors import SettingsError

__all__ = [
    "ALWAYS_BLOCKED_NETWORKS",
    "CacheSettings",
    "FetchSettings",
    "SettingsError",
    "VerifyPolicy",
    "VerifyRule",
    "build_fetch_settings",
    "cache_settings_from_env",
    "default_cache_dir",
    "parse_duration",
    "verify_policy_path",
    "with_insecure_registries",
]

# Addresses no module fetch may reach, whatever the configuration (Istio pkg/wasm/ssrf.go).
ALWAYS_BLOCKED_NETWORKS: tuple[str, ...] = (
    "169.254.0.0/16",  # IPv4 link-local, includes 169.254.169.254 (cloud metadata)
    "fe80::/10",  # IPv6 link-local
    "100.100.100.200/32",  # Alibaba Cloud metadata
    "fd00:ec2::254/128",  # AWS IMDS over IPv6
)


class VerifyRule(Protocol):
    """The rule a verify policy applies to one repository (``trust_policy.Rule``)."""

    @property
    def required(self) -> bool:
        """A signature is required."""
        ...

    @property
    def fingerprints(self) -> frozenset[str]:
        """What may have verified a module: key fingerprints and keyless identities."""
        ...


class VerifyPolicy(Protocol):
    """A loaded verify policy (``wasm_agent.fetch.trust_policy.TrustPolicy`` is the one kind).

    core cannot import fetch, so :class:`FetchSettings` names the policy by this protocol; the
    fetch package narrows it back to its ``TrustPolicy`` where it needs the keys.
    """

    @property
    def source(self) -> str:
        """Where the policy came from (a file name), for messages."""
        ...

    def rule_for(self, name: str) -> VerifyRule | None:
        """The first rule matching ``registry/repository``, else None (refused)."""
        ...


@dataclass(frozen=True)
class FetchSettings:
    """How remote modules are fetched (Istio's ``WASM_*`` variables)."""

    insecure_registries: frozenset[str] = frozenset()
    http_request_timeout: float = 15.0
    http_max_retries: int = 5
    max_binary_size: int = 256 * 1024 * 1024
    blocked_networks: tuple[IPNetwork, ...] = field(
        default_factory=lambda: config.cidr_list(",".join(ALWAYS_BLOCKED_NETWORKS))
    )
    docker_config_dir: Path | None = None
    default_fetch_timeout: float = 5.0  # whole-fetch deadline when the config names none
    max_redirects: int = 10
    verify_policy: VerifyPolicy | None = None  # cosign signatures required (docs/signing.md)
    registry_config_dir: Path | None = None  # <dir>/<host>/hosts.toml (docs/registries.md)
    # False: hosts.toml / certs.d client certificates are not presented (the node service
    # fetching for a pod: the node's TLS identity must not grant pods access)
    registry_client_certs: bool = True
    credential_helper_ttl: float = 900.0  # a Docker credential helper's answer is reused
    credential_helper_timeout: float = 10.0  # a helper running longer is killed

    def is_insecure(self, host: str) -> bool:
        """True if ``host`` (``name`` or ``name:port``) may use plain HTTP or unverified TLS."""
        if "*" in self.insecure_registries:
            return True
        name = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
        return host in self.insecure_registries or name in self.insecure_registries

    def is_blocked(self, address: str) -> bool:
        """True if the IP ``address`` lies in a network no fetch may reach."""
        ip = ipaddress.ip_address(address.split("%", 1)[0])
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
            ip = ip.ipv4_mapped
        if ip.is_unspecified:  # connect() to 0.0.0.0 or :: reaches this host: judge it as such
            ip = ipaddress.ip_address("127.0.0.1" if ip.version == 4 else "::1")
        return any(ip.version == net.version and ip in net for net in self.blocked_networks)


@dataclass(frozen=True)
class CacheSettings:
    """Where modules are cached and how long unused ones are kept."""

    directory: Path
    module_expiry: float = 24 * 3600.0
    purge_interval: float = 3600.0
    max_bytes: int | None = None  # --cache-max-bytes: LRU eviction above it (docs/cache.md)
    # a failed module is refused this long without a fetch; 10 s from the config table (every
    # command), off for a CacheSettings built directly (library use, tests)
    fetch_backoff: float = 0.0


def default_cache_dir(env: Mapping[str, str] | None = None) -> Path:
    """``$WASM_AGENT_CACHE_DIR``, else ``~/.cache/wasm-agent``."""
    env = os.environ if env is None else env
    configured = config.values([config.CACHE_DIR], env)["directory"]
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "wasm-agent"


def verify_policy_path(env: Mapping[str, str], flag: str | Path | None = None) -> str:
    """The verify policy file: the ``--verify-policy`` flag, else ``$WASM_AGENT_VERIFY_POLICY``."""
    return str(flag) if flag else env.get("WASM_AGENT_VERIFY_POLICY", "").strip()


def build_fetch_settings(
    env: Mapping[str, str] | None = None, *, verify_policy: VerifyPolicy | None = None
) -> FetchSettings:
    """Build :class:`FetchSettings` from Istio's environment variables (``config.FETCH``).

    The verify policy is passed already loaded: core cannot parse it. Callers use
    ``wasm_agent.fetch.trust_policy.fetch_settings_from_env``, which reads the policy file named
    by the flag or ``$WASM_AGENT_VERIFY_POLICY`` and calls this. Raises
    :class:`~wasm_agent.core.config.ConfigError` naming the variable, its value and what is
    allowed.
    """
    env = os.environ if env is None else env
    found = config.values(config.FETCH, env)
    docker_config = found["docker_config_dir"]
    hosts_dir = found["registry_config_dir"]
    return FetchSettings(
        insecure_registries=found["insecure_registries"],
        http_request_timeout=found["http_request_timeout"],
        http_max_retries=max(1, found["http_max_retries"]),  # 0 and 1: one attempt
        max_binary_size=found["max_binary_size"],
        blocked_networks=FetchSettings().blocked_networks + found["blocked_networks"],
        docker_config_dir=Path(docker_config) if docker_config else None,
        verify_policy=verify_policy,
        registry_config_dir=Path(hosts_dir) if hosts_dir else None,
        credential_helper_ttl=found["credential_helper_ttl"],
        credential_helper_timeout=found["credential_helper_timeout"],
    )


def with_insecure_registries(settings: FetchSettings, hosts: Iterable[str]) -> FetchSettings:
    """``settings`` with ``hosts`` (``--insecure-registry`` flags) added to the insecure set."""
    extra = frozenset(hosts)
    if not extra:
        return settings
    return replace(settings, insecure_registries=settings.insecure_registries | extra)


def cache_settings_from_env(
    directory: str | Path | None = None, env: Mapping[str, str] | None = None
) -> CacheSettings:
    """Build :class:`CacheSettings` (``config.CACHE``); ``directory`` (a flag) wins."""
    env = os.environ if env is None else env
    found = config.values(config.CACHE, env)
    return CacheSettings(
        directory=Path(directory).expanduser() if directory else default_cache_dir(env),
        module_expiry=found["module_expiry"],
        purge_interval=found["purge_interval"],
        max_bytes=found["max_bytes"],
        fetch_backoff=found["fetch_backoff"],
    )
