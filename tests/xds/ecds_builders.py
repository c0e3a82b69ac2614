"""Builders for ECDS resources and discovery messages used by the xds tests."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from envoy.config.core.v3 import extension_pb2
from envoy.extensions.filters.http.wasm.v3 import wasm_pb2 as http_wasm_pb2
from envoy.extensions.filters.network.wasm.v3 import wasm_pb2 as network_wasm_pb2
from envoy.extensions.wasm.v3 import wasm_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import any_pb2, json_format
from google.protobuf.message import Message
from udpa.type.v1 import typed_struct_pb2 as udpa_ts
from xds.type.v3 import typed_struct_pb2 as xds_ts

from wasm_agent.cache import CachedModule
from wasm_agent.xds.types import ECDS_TYPE, TYPE_PREFIX

SECRET = '{"auths":{"registry.example":{"auth":"c2VjcmV0LXVzZXI6aHVudGVyMg=="}}}'
URL = "oci://registry.example/plugins/authz:1.0"
SHA = "a" * 64


def wasm_filter(
    *,
    network: bool = False,
    url: str | None = URL,
    sha256: str = "nil",
    timeout: float | None = 30,
    env: Mapping[str, str] | None = None,
    host_env_keys: Sequence[str] = (),
    local: str | None = None,
    failure_policy: int | None = None,
    fail_open: bool | None = None,
    plugin_name: str = "authz",
) -> http_wasm_pb2.Wasm | network_wasm_pb2.Wasm:
    """A Wasm filter config with remote code (or ``local`` file code)."""
    wasm = network_wasm_pb2.Wasm() if network else http_wasm_pb2.Wasm()
    config = wasm.config
    config.name = plugin_name
    config.root_id = "root"
    config.configuration.Pack(wasm_pb2.PluginConfig(name="inner"))
    vm = config.vm_config
    vm.runtime = "envoy.wasm.runtime.v8"
    vm.vm_id = "vm-1"
    if local is not None:
        vm.code.local.filename = local
    else:
        remote = vm.code.remote
        remote.sha256 = sha256
        remote.http_uri.cluster = "outbound|80||registry.example"
        if url is not None:
            remote.http_uri.uri = url
        if timeout is not None:
            remote.http_uri.timeout.FromNanoseconds(int(timeout * 1e9))
    for key, value in (env or {}).items():
        vm.environment_variables.key_values[key] = value
    if host_env_keys:
        vm.environment_variables.host_env_keys.extend(host_env_keys)
    if failure_policy is not None:
        config.failure_policy = failure_policy
    if fail_open is not None:
        config.fail_open = fail_open
    return wasm


def packed(message: Message, type_url: str | None = None) -> any_pb2.Any:
    value = any_pb2.Any()
    value.Pack(message)
    if type_url is not None:
        value.type_url = type_url
    return value


def typed_struct(message: Message, kind: str = "udpa") -> any_pb2.Any:
    """``message`` wrapped in a udpa.type.v1 or xds.type.v3 TypedStruct."""
    wrapper = udpa_ts.TypedStruct() if kind == "udpa" else xds_ts.TypedStruct()
    wrapper.type_url = TYPE_PREFIX + message.DESCRIPTOR.full_name
    wrapper.value.update(json_format.MessageToDict(message))
    return packed(wrapper)


def extension(name: str, typed_config: Message | any_pb2.Any) -> any_pb2.Any:
    """An ECDS resource: TypedExtensionConfig ``name`` packed in an Any."""
    config = extension_pb2.TypedExtensionConfig(name=name)
    if isinstance(typed_config, any_pb2.Any):
        config.typed_config.CopyFrom(typed_config)
    else:
        config.typed_config.Pack(typed_config)
    return packed(config)


def sotw_response(
    resources: Sequence[any_pb2.Any], version: str = "v7", nonce: str = "nonce-7"
) -> discovery_pb2.DiscoveryResponse:
    response = discovery_pb2.DiscoveryResponse(
        version_info=version, type_url=ECDS_TYPE, nonce=nonce
    )
    response.resources.extend(resources)
    return response


def delta_response(
    resources: Sequence[tuple[str, any_pb2.Any | None]],
    removed: Sequence[str] = (),
    nonce: str = "delta-nonce",
) -> discovery_pb2.DeltaDiscoveryResponse:
    response = discovery_pb2.DeltaDiscoveryResponse(
        system_version_info="sys-3", type_url=ECDS_TYPE, nonce=nonce
    )
    for number, (name, body) in enumerate(resources):
        item = response.resources.add(name=name, version=f"rv-{number}")
        item.aliases.append(f"alias-{name}")
        item.ttl.seconds = 60 + number
        if body is not None:
            item.resource.CopyFrom(body)
    response.removed_resources.extend(removed)
    return response


def module(name: str = "abc") -> CachedModule:
    return CachedModule(
        path=Path(f"/var/cache/wasm/modules/{name}.wasm"),
        sha256=name,
        url=URL,
        size=1234,
        hit=True,
    )


def unpack_extension(resource: any_pb2.Any) -> extension_pb2.TypedExtensionConfig:
    config = extension_pb2.TypedExtensionConfig()
    assert resource.Unpack(config)
    return config
