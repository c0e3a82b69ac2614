"""The xDS resources the demo's control plane serves, and the sample plugin's binary.

One listener on 127.0.0.1 (port chosen by the OS) whose HTTP connection manager has an ECDS
Wasm filter (``demo-plugin``) and then the router to the ``backend`` cluster; the ECDS resource
names the plugin by URL and sha256, the way istiod sends a WasmPlugin.
"""

from __future__ import annotations

import hashlib
from importlib import resources as package_files

import wasmtime
from envoy.config.core.v3 import address_pb2, config_source_pb2, extension_pb2, http_uri_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.http.wasm.v3 import wasm_pb2 as http_wasm_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.wasm.v3 import wasm_pb2
from google.protobuf import duration_pb2

from wasm_agent.xds.types import HTTP_RBAC_TYPE, HTTP_WASM_TYPE

LISTENER_NAME = "demo"
FILTER_NAME = "demo-plugin"
BACKEND_CLUSTER = "backend"
PLUGIN_HEADER = "x-wasm-agent-demo"
PLUGIN_VALUE = "hello"


def plugin_wat() -> str:
    """The sample plugin's WebAssembly text, shipped in this package."""
    return package_files.files(__package__).joinpath("plugin.wat").read_text(encoding="utf-8")


def plugin_wasm() -> bytes:
    """The sample plugin compiled to a Wasm binary."""
    return bytes(wasmtime.wat2wasm(plugin_wat()))


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def listener(
    name: str = LISTENER_NAME,
    filter_name: str = FILTER_NAME,
    cluster: str = BACKEND_CLUSTER,
    stat_prefix: str = "demo",
) -> listener_pb2.Listener:
    """127.0.0.1, port from the OS; the ECDS Wasm filter ``filter_name`` (Wasm or RBAC, as
    istiod lists them), then the router to ``cluster``."""
    route = route_pb2.RouteConfiguration(
        name=name,
        virtual_hosts=[
            route_components_pb2.VirtualHost(
                name="all",
                domains=["*"],
                routes=[
                    route_components_pb2.Route(
                        match=route_components_pb2.RouteMatch(prefix="/"),
                        route=route_components_pb2.RouteAction(cluster=cluster),
                    )
                ],
            )
        ],
    )
    manager = hcm_pb2.HttpConnectionManager(stat_prefix=stat_prefix, route_config=route)
    wasm_filter = manager.http_filters.add(name=filter_name)
    wasm_filter.config_discovery.config_source.ads.SetInParent()
    wasm_filter.config_discovery.config_source.resource_api_version = config_source_pb2.V3
    wasm_filter.config_discovery.type_urls.extend([HTTP_WASM_TYPE, HTTP_RBAC_TYPE])
    manager.http_filters.add(name="envoy.filters.http.router").typed_config.Pack(
        router_pb2.Router()
    )
    chain = listener_components_pb2.FilterChain()
    chain.filters.add(name="envoy.filters.network.http_connection_manager").typed_config.Pack(
        manager
    )
    return listener_pb2.Listener(
        name=name,
        address=address_pb2.Address(
            socket_address=address_pb2.SocketAddress(address="127.0.0.1", port_value=0)
        ),
        filter_chains=[chain],
    )


def wasm_extension(url: str, sha256: str) -> extension_pb2.TypedExtensionConfig:
    """The ECDS resource: an HTTP Wasm filter with remote code (what istiod sends)."""
    vm = wasm_pb2.VmConfig(vm_id=FILTER_NAME, runtime="envoy.wasm.runtime.v8")
    vm.code.remote.http_uri.CopyFrom(
        http_uri_pb2.HttpUri(
            uri=url, cluster="wasm-remote", timeout=duration_pb2.Duration(seconds=30)
        )
    )
    vm.code.remote.sha256 = sha256
    config = wasm_pb2.PluginConfig(name=FILTER_NAME, root_id=FILTER_NAME, vm_config=vm)
    config.failure_policy = wasm_pb2.FAIL_CLOSED
    extension = extension_pb2.TypedExtensionConfig(name=FILTER_NAME)
    extension.typed_config.Pack(http_wasm_pb2.Wasm(config=config))
    return extension
