"""Envoy bootstrap, listener and ECDS resources for the end-to-end tests: the demo's, named for
the tests (Delta ADS on request, a filter name, fail-open, env and local code as options)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from envoy.config.core.v3 import extension_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.filters.http.wasm.v3 import wasm_pb2 as http_wasm_pb2
from envoy.extensions.wasm.v3 import wasm_pb2
from google.protobuf import any_pb2

from tests.support.istiod import as_any
from wasm_agent.demo.envoy import bootstrap as demo_bootstrap
from wasm_agent.demo.resources import listener as demo_listener
from wasm_agent.demo.resources import wasm_extension as demo_wasm_extension
from wasm_agent.xds.types import ECDS_TYPE, LISTENER_TYPE

FILTER_NAME = "my-wasm"
LISTENER_NAME = "main"
NODE = {"id": "sidecar~127.0.0.1~e2e.default~default.svc.cluster.local", "cluster": "e2e"}


def bootstrap(socket: str, echo_port: int, *, delta: bool = False) -> dict[str, Any]:
    """The demo's bootstrap: ADS over the agent's Unix socket, LDS from ADS, the backend cluster
    at ``echo_port``; Delta ADS when ``delta``."""
    config = demo_bootstrap(Path(socket), echo_port)
    config["node"] = dict(NODE)
    if delta:
        config["dynamic_resources"]["ads_config"]["api_type"] = "DELTA_GRPC"
    return config


def listener() -> listener_pb2.Listener:
    """The demo's listener (port 0 on 127.0.0.1, the ECDS Wasm filter, the router to the
    backend cluster), named for the tests."""
    return demo_listener(LISTENER_NAME, FILTER_NAME, stat_prefix="e2e")


def wasm_extension(
    url: str,
    sha256: str = "",
    *,
    fail_open: bool = False,
    env: dict[str, str] | None = None,
    name: str = FILTER_NAME,
    local: str | None = None,
) -> extension_pb2.TypedExtensionConfig:
    """The demo's ECDS resource (an HTTP Wasm filter loading ``url``), named ``name``; ``local``
    replaces the remote code by a local file."""
    extension = demo_wasm_extension(url, sha256)
    wasm = http_wasm_pb2.Wasm()
    extension.typed_config.Unpack(wasm)
    config = wasm.config
    config.name = config.root_id = config.vm_config.vm_id = name
    if local is not None:
        config.vm_config.code.local.filename = local  # the code oneof: remote is cleared
    if env:
        config.vm_config.environment_variables.key_values.update(env)
    if fail_open:
        config.failure_policy = wasm_pb2.FAIL_OPEN
    extension.name = name
    extension.typed_config.Pack(wasm)
    return extension


def serve(istiod: Any, extension: extension_pb2.TypedExtensionConfig, version: str) -> list[str]:
    """Publish the listener (once) and the ECDS resource at ``version``; return ECDS nonces."""
    if LISTENER_TYPE not in istiod.snapshot:
        istiod.set_resources(LISTENER_TYPE, {LISTENER_NAME: listener()}, "l1")
    return istiod.set_resources(ECDS_TYPE, {extension.name: extension}, version)


def pack(message: Any) -> any_pb2.Any:
    return as_any(message)
