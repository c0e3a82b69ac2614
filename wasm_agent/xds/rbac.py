"""RBAC filters that stand in for a Wasm filter whose module could not be loaded.

Same payloads as Istio's agent: no rules means allow all (fail-open plugins); empty rules means
deny all (fail-closed plugins in ``deny`` mode). The replacement keeps the extension config's
name, so the listener that references it by name picks it up.
"""

from __future__ import annotations

from envoy.config.core.v3 import extension_pb2
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as http_rbac_pb2
from envoy.extensions.filters.network.rbac.v3 import rbac_pb2 as network_rbac_pb2
from google.protobuf import any_pb2
from google.protobuf.message import Message

from wasm_agent.xds.types import ECDS_TYPE, HTTP_RBAC_TYPE, NETWORK_RBAC_TYPE

ALLOW_STAT_PREFIX = "wasm-default-allow"
DENY_STAT_PREFIX = "wasm-default-deny"


def _packed(type_url: str, message: Message) -> bytes:
    return any_pb2.Any(type_url=type_url, value=message.SerializeToString()).SerializeToString()


def _http(allow: bool) -> bytes:
    if allow:
        return _packed(HTTP_RBAC_TYPE, http_rbac_pb2.RBAC(rules_stat_prefix=ALLOW_STAT_PREFIX))
    config = http_rbac_pb2.RBAC(rules_stat_prefix=DENY_STAT_PREFIX)
    config.rules.SetInParent()
    return _packed(HTTP_RBAC_TYPE, config)


def _network(allow: bool) -> bytes:
    if allow:
        return _packed(NETWORK_RBAC_TYPE, network_rbac_pb2.RBAC(stat_prefix=ALLOW_STAT_PREFIX))
    config = network_rbac_pb2.RBAC(stat_prefix=DENY_STAT_PREFIX)
    config.rules.SetInParent()
    return _packed(NETWORK_RBAC_TYPE, config)


# Serialized typed_config Any per (network, allow), built once.
_TYPED_CONFIGS = {
    (False, True): _http(True),
    (False, False): _http(False),
    (True, True): _network(True),
    (True, False): _network(False),
}


def fallback_config(name: str, *, network: bool, allow: bool) -> extension_pb2.TypedExtensionConfig:
    """The TypedExtensionConfig ``name`` holding an allow-all or deny-all RBAC filter."""
    config = extension_pb2.TypedExtensionConfig(name=name)
    config.typed_config.ParseFromString(_TYPED_CONFIGS[network, allow])
    return config


def fallback_resource(
    name: str, *, network: bool, allow: bool, type_url: str = ECDS_TYPE
) -> any_pb2.Any:
    """:func:`fallback_config` packed as an ECDS resource (``Any``)."""
    config = fallback_config(name, network=network, allow=allow)
    return any_pb2.Any(type_url=type_url, value=config.SerializeToString(deterministic=True))
