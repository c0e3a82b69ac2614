"""Envoy bootstrap, listener and ECDS resources for the end-to-end tests."""

from __future__ import annotations

from typing import Any

from envoy.config.core.v3 import (
    base_pb2,
    extension_pb2,
    http_uri_pb2,
)
from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.filters.http.wasm.v3 import wasm_pb2 as http_wasm_pb2
from envoy.extensions.wasm.v3 import wasm_pb2
from google.protobuf import any_pb2, duration_pb2

from tests.support.istiod import as_any
from wasm_agent.demo.resources import listener as demo_listener
from wasm_agent.xds.types import ECDS_TYPE, LISTENER_TYPE

FILTER_NAME = "my-wasm"
LISTENER_NAME = "main"


def bootstrap(socket: str, echo_port: int, *, delta: bool = False) -> dict[str, Any]:
    """ADS over the agent's Unix socket; LDS from ADS; a static echo cluster."""
    return {
        "node": {"id": "sidecar~127.0.0.1~e2e.default~default.svc.cluster.local", "cluster": "e2e"},
        "dynamic_resources": {
            "ads_config": {
                "api_type": "DELTA_GRPC" if delta else "GRPC",
                "transport_api_version": "V3",
                "set_node_on_first_message_only": True,
                "grpc_services": [{"envoy_grpc": {"cluster_name": "xds-grpc"}}],
            },
            "lds_config": {"ads": {}, "resource_api_version": "V3"},
        },
        "static_resources": {
            "clusters": [
                {
                    "name": "xds-grpc",
                    "type": "STATIC",
                    "connect_timeout": "1s",
                    "load_assignment": {
                        "cluster_name": "xds-grpc",
                        "endpoints": [
                            {
                                "lb_endpoints": [
                                    {"endpoint": {"address": {"pipe": {"path": socket}}}}
                                ]
                            }
                        ],
                    },
                    "typed_extension_protocol_options": {
                        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                            "@type": "type.googleapis.com/"
                            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                            "explicit_http_config": {"http2_protocol_options": {}},
                        }
                    },
                },
                {
                    "name": "echo",
                    "type": "STATIC",
                    "connect_timeout": "1s",
                    "load_assignment": {
                        "cluster_name": "echo",
                        "endpoints": [
                            {
                                "lb_endpoints": [
                                    {
                                        "endpoint": {
                                            "address": {
                                                "socket_address": {
                                                    "address": "127.0.0.1",
                                                    "port_value": echo_port,
                                                }
                                            }
                                        }
                                    }
                                ]
                            }
                        ],
                    },
                },
            ]
        },
    }


def listener() -> listener_pb2.Listener:
    """Port 0 on 127.0.0.1; HCM with the ECDS Wasm filter, then the router to ``echo``
    (the demo's listener, named for the tests)."""
    return demo_listener(LISTENER_NAME, FILTER_NAME, cluster="echo", stat_prefix="e2e")


def wasm_extension(
    url: str,
    sha256: str = "",
    *,
    fail_open: bool = False,
    env: dict[str, str] | None = None,
    name: str = FILTER_NAME,
    local: str | None = None,
) -> extension_pb2.TypedExtensionConfig:
    """A TypedExtensionConfig with an HTTP Wasm filter loading ``url`` (remote) or ``local``."""
    vm = wasm_pb2.VmConfig(vm_id=name, runtime="envoy.wasm.runtime.v8")
    if local is not None:
        vm.code.local.filename = local
    else:
        vm.code.remote.http_uri.CopyFrom(
            http_uri_pb2.HttpUri(
                uri=url, cluster="wasm-remote", timeout=duration_pb2.Duration(seconds=30)
            )
        )
        vm.code.remote.sha256 = sha256
    if env:
        vm.environment_variables.key_values.update(env)
    config = wasm_pb2.PluginConfig(name=name, root_id=name, vm_config=vm)
    config.failure_policy = wasm_pb2.FAIL_OPEN if fail_open else wasm_pb2.FAIL_CLOSED
    extension = extension_pb2.TypedExtensionConfig(name=name)
    extension.typed_config.Pack(http_wasm_pb2.Wasm(config=config))
    return extension


def serve(istiod: Any, extension: extension_pb2.TypedExtensionConfig, version: str) -> list[str]:
    """Publish the listener (once) and the ECDS resource at ``version``; return ECDS nonces."""
    if LISTENER_TYPE not in istiod.snapshot:
        istiod.set_resources(LISTENER_TYPE, {LISTENER_NAME: listener()}, "l1")
    return istiod.set_resources(ECDS_TYPE, {extension.name: extension}, version)


def pack(message: Any) -> any_pb2.Any:
    return as_any(message)


_ = base_pb2  # imported for its descriptors (Node, used in bootstraps)
