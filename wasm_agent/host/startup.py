"""What ``start_plugin`` derives from its arguments: the WASI environment Envoy builds from
``vm_config.environment_variables``, the connection's addresses; and Envoy's local reply for a
callout that timed out."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

# Envoy's router local reply on an upstream timeout (Http::Utility::sendLocalReply: :status,
# then content-length and content-type for a body), which the async client hands to the plugin.
CALLOUT_TIMEOUT_BODY = b"upstream request timeout"
CALLOUT_TIMEOUT_HEADERS = (
    (":status", "504"),
    ("content-length", str(len(CALLOUT_TIMEOUT_BODY))),
    ("content-type", "text/plain"),
)


def parse_address(text: str, what: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{what} must be 'ip:port', got {text!r}")
    return host.strip("[]"), int(port)


def connection_addresses(
    source: str | None, destination: str | None, upstream: str | None
) -> dict[str, tuple[str, int]]:
    """The connection's addresses (Envoy-like defaults for the ones not given)."""
    addresses = {
        "source": ("127.0.0.1", 50000),
        "destination": ("127.0.0.1", 10000),
        "upstream": ("127.0.0.1", 10001),
    }
    for key, value in (("source", source), ("destination", destination), ("upstream", upstream)):
        if value is not None:
            addresses[key] = parse_address(value, f"{key}_address")
    return addresses


def environment_variables(
    key_values: Mapping[str, str], host_env_keys: Sequence[str], plugin_name: str
) -> dict[str, str]:
    """The WASI environment Envoy builds from ``vm_config.environment_variables``.

    Like Envoy's ``WasmConfig``: every key once (else the configuration is rejected), the
    ``key_values`` first, then each ``host_env_keys`` name this process has in its environment.
    """
    seen = set(key_values)
    for key in host_env_keys:
        if key in seen:
            raise ValueError(
                f"Key {key} is duplicated in envoy.extensions.wasm.v3.VmConfig."
                f"environment_variables for {plugin_name}. All the keys must be unique."
            )
        seen.add(key)
    merged = {str(k): str(v) for k, v in key_values.items()}
    for key in host_env_keys:
        value = os.environ.get(key)
        if value is not None:
            merged[key] = value
    return merged
