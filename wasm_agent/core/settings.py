"""Settings built once from the environment (Istio's variable names) and flags.

Everything else receives these objects; nothing else reads ``os.environ`` for these values.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from wasm_agent.core.errors import WasmAgentError

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Addresses no module fetch may reach, whatever the configuration (Istio pkg/wasm/ssrf.go).
ALWAYS_BLOCKED_NETWORKS: tuple[str, ...] = (
    "169.254.0.0/16",  # IPv4 link-local, includes 169.254.169.254 (cloud metadata)
    "fe80::/10",  # IPv6 link-local
    "100.100.100.200/32",  # Alibaba Cloud metadata
    "fd00:ec2::254/128",  # AWS IMDS over IPv6
)

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


class SettingsError(WasmAgentError, ValueError):
    """A setting has a value that cannot be used; the message names the setting."""


class VerifyPolicy(Protocol):
    """A loaded verify policy (``wasm_agent.fetch.trust_policy.TrustPolicy`` is the one kind).

    core cannot import fetch, so :class:`FetchSettings` names the policy by this protocol; the
    fetch package narrows it back to its ``TrustPolicy``.
    """

    @property
    def source(self) -> str:
        """Where the policy came from (a file name), for messages."""
        ...


def parse_duration(text: str, name: str = "duration") -> float:
    """Parse a Go-style duration ("1h", "1m30s", "500ms", bare seconds "15") into seconds."""
    text = text.strip()
    if re.fullmatch(r"\d+(?:\.\d+)?", text):
        return float(text)
    pos, total = 0, 0.0
    for match in _DURATION_PART.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        pos = match.end()
    if pos != len(text) or not text:
        raise SettingsError(f"{name}: invalid duration {text!r} (examples: 15s, 500ms, 1h)")
    return total


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise SettingsError(f"{name}: not an integer: {raw!r}") from None


def _duration(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name, "").strip()
    return parse_duration(raw, name) if raw else default


def _networks(raw: str, name: str) -> tuple[IPNetwork, ...]:
    networks = []
    for item in filter(None, (part.strip() for part in raw.split(","))):
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise SettingsError(f"{name}: not a CIDR: {item!r}") from None
    return tuple(networks)


@dataclass(frozen=True)
class FetchSettings:
    """How remote modules are fetched (Istio's ``WASM_*`` variables)."""

    insecure_registries: frozenset[str] = frozenset()
    http_request_timeout: float = 15.0
    http_max_retries: int = 5
    max_binary_size: int = 256 * 1024 * 1024
    blocked_networks: tuple[IPNetwork, ...] = field(
        default_factory=lambda: _networks(",".join(ALWAYS_BLOCKED_NETWORKS), "built-in")
    )
    docker_config_dir: Path | None = None
    default_fetch_timeout: float = 5.0  # whole-fetch deadline when the config names none
    max_redirects: int = 10
    verify_policy: VerifyPolicy | None = None  # cosign signatures required (docs/signing.md)

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
        return any(ip.version == net.version and ip in net for net in self.blocked_networks)


@dataclass(frozen=True)
class CacheSettings:
    """Where modules are cached and how long unused ones are kept."""

    directory: Path
    module_expiry: float = 24 * 3600.0
    purge_interval: float = 3600.0


def default_cache_dir(env: Mapping[str, str] | None = None) -> Path:
    """``$WASM_AGENT_CACHE_DIR``, else ``~/.cache/wasm-agent``."""
    env = os.environ if env is None else env
    configured = env.get("WASM_AGENT_CACHE_DIR", "").strip()
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "wasm-agent"


def verify_policy_path(env: Mapping[str, str], flag: str | Path | None = None) -> str:
    """The verify policy file: the ``--verify-policy`` flag, else ``$WASM_AGENT_VERIFY_POLICY``."""
    return str(flag) if flag else env.get("WASM_AGENT_VERIFY_POLICY", "").strip()


def build_fetch_settings(
    env: Mapping[str, str] | None = None, *, verify_policy: VerifyPolicy | None = None
) -> FetchSettings:
    """Build :class:`FetchSettings` from Istio's environment variables.

    The verify policy is passed already loaded: core cannot parse it. Callers use
    ``wasm_agent.fetch.trust_policy.fetch_settings_from_env``, which reads the policy file named
    by the flag or ``$WASM_AGENT_VERIFY_POLICY`` and calls this.
    """
    env = os.environ if env is None else env
    blocked = ",".join((*ALWAYS_BLOCKED_NETWORKS, env.get("BLOCKED_CIDRS_IN_WASM_FETCH", "")))
    docker_config = env.get("DOCKER_CONFIG", "").strip()
    max_size = _int(env, "ISTIO_WASM_MAX_BINARY_SIZE_BYTES", 256 * 1024 * 1024)
    if max_size <= 0:
        raise SettingsError("ISTIO_WASM_MAX_BINARY_SIZE_BYTES: must be positive")
    return FetchSettings(
        insecure_registries=frozenset(
            h.strip() for h in env.get("WASM_INSECURE_REGISTRIES", "").split(",") if h.strip()
        ),
        http_request_timeout=_duration(env, "WASM_HTTP_REQUEST_TIMEOUT", 15.0),
        http_max_retries=max(1, _int(env, "WASM_HTTP_REQUEST_MAX_RETRIES", 5)),
        max_binary_size=max_size,
        blocked_networks=_networks(blocked, "BLOCKED_CIDRS_IN_WASM_FETCH"),
        docker_config_dir=Path(docker_config) if docker_config else None,
        verify_policy=verify_policy,
    )


def cache_settings_from_env(
    directory: str | Path | None = None, env: Mapping[str, str] | None = None
) -> CacheSettings:
    """Build :class:`CacheSettings`; ``directory`` (a flag) wins over the environment."""
    env = os.environ if env is None else env
    return CacheSettings(
        directory=Path(directory).expanduser() if directory else default_cache_dir(env),
        module_expiry=_duration(env, "WASM_MODULE_EXPIRY", 24 * 3600.0),
        purge_interval=_duration(env, "WASM_PURGE_INTERVAL", 3600.0),
    )
