"""Regression tests for what fuzzing found (each input is also in the seed corpus's spirit:
the fuzz targets in ``tests/fuzz/targets`` would report it again)."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.host.wat import BASIC, plugin
from wasm_agent.fetch.dockerconfig import DockerConfigError, parse_docker_config
from wasm_agent.fetch.errors import AuthFailure
from wasm_agent.fetch.oci_auth import RegistryAuth
from wasm_agent.fetch.oci_layers import LayoutError, parse_manifest
from wasm_agent.host.harness import start_plugin

DEEP = b"[" * 100_000  # json's C decoder nests one stack frame per level: RecursionError


def test_deeply_nested_manifest_is_a_layout_error() -> None:
    with pytest.raises(LayoutError, match="nested too deeply"):
        parse_manifest(DEEP, "application/vnd.oci.image.manifest.v1+json")


def test_deeply_nested_pull_secret_is_a_docker_config_error() -> None:
    with pytest.raises(DockerConfigError, match="nested too deeply"):
        parse_docker_config(b'{"auths": ' + DEEP)


def test_auths_key_with_a_bad_ipv6_literal_is_a_docker_config_error() -> None:
    secret = json.dumps({"auths": {"https://[docker.io/v1/": {"auth": "dXNlcjpwYXNz"}}})
    with pytest.raises(DockerConfigError, match="not a registry address") as info:
        parse_docker_config(secret.encode())
    assert "dXNlcjpwYXNz" not in str(info.value)


async def test_deeply_nested_token_answer_is_an_auth_failure() -> None:
    def token_server(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=DEEP, headers={"content-type": "application/json"})

    challenge = httpx.Response(
        401, headers={"www-authenticate": 'Bearer realm="https://auth.test/token",service="r"'}
    )
    auth = RegistryAuth("oci://registry.test/p:1")
    async with httpx.AsyncClient(transport=httpx.MockTransport(token_server)) as client:
        with pytest.raises(AuthFailure, match="not a token"):
            await auth.answer(client, challenge, "repository:p:pull")


def test_grpc_names_that_are_not_utf8_do_not_trap() -> None:
    # proxy_grpc_call/_stream decoded the service and method names as strict UTF-8: a plugin
    # passing other bytes trapped inside the host function (Envoy takes any bytes)
    body = (
        BASIC
        + """
      (func (export "proxy_on_vm_start") (param i32 i32) (result i32)
        (call $st (call $proxy_grpc_call (i32.const 1024) (i32.const 0) (i32.const 1024)
          (i32.const 4) (i32.const 1028) (i32.const 2) (i32.const 0) (i32.const 0)
          (i32.const 1030) (i32.const 2) (i32.const 1000) (i32.const 32)))
        (call $st (call $proxy_grpc_stream (i32.const 1024) (i32.const 0) (i32.const 1024)
          (i32.const 4) (i32.const 1028) (i32.const 2) (i32.const 0) (i32.const 0)
          (i32.const 32)))
        (i32.const 1))
    """
    )
    host = start_plugin(plugin(body, data={1024: b"sv\xffc\xc3(hi"}))
    assert host.failed is None
    assert host.log_messages() == ["0", "0"]
    assert [c.service_name for c in host.grpc_calls] == ["sv\ufffdc", "sv\ufffdc"]


def test_continue_stream_from_the_request_body_callback() -> None:
    # proxy_continue_stream drops the context's request buffer; the host then looked the
    # buffer up again after the callback and failed with KeyError
    body = (
        BASIC
        + """
      (func (export "proxy_on_request_body") (param i32 i32 i32) (result i32)
        (drop (call $proxy_set_buffer_bytes (i32.const 0) (i32.const 0) (i32.const 0)
          (i32.const 1024) (i32.const 3)))
        (call $st (call $proxy_continue_stream (i32.const 0)))
        (i32.const 0))
    """
    )
    host = start_plugin(plugin(body, data={1024: "pre"}))
    # one body frame: with Envoy's front end the empty end-of-stream frame prepends once more
    ex = host.exchange(
        {":method": "POST", ":path": "/", ":authority": "h"},
        b"body",
        {":status": "200"},
        frontend=False,
    )
    assert ex.failed is None and host.failed is None
    assert bytes(ex.upstream.body) == b"prebody"
    assert host.log_messages() == ["0"]


def test_typed_struct_with_a_null_any_type_is_malformed() -> None:
    # json_format raised AttributeError for {"@type": null} inside an Any field of the
    # TypedStruct: plan_response raised it instead of planning a NACK
    from google.protobuf import any_pb2
    from udpa.type.v1 import typed_struct_pb2

    from tests.xds.ecds_builders import extension, sotw_response
    from wasm_agent.xds.convert import FailureMode
    from wasm_agent.xds.decide import Nack, decide, plan_response
    from wasm_agent.xds.types import HTTP_WASM_TYPE, Flavour

    wrapper = typed_struct_pb2.TypedStruct(type_url=HTTP_WASM_TYPE)
    wrapper.value.update({"config": {"configuration": {"@type": None}}})
    typed = any_pb2.Any()
    typed.Pack(wrapper)
    data = sotw_response([extension("ts", typed)]).SerializeToString()
    plan = plan_response(data, Flavour.SOTW)
    assert plan.rejection is not None and "ts" in str(plan.rejection)
    assert isinstance(decide(plan, {}, FailureMode.NACK), Nack)


def test_auth_that_is_not_ascii_is_a_docker_config_error() -> None:
    # base64.b64decode raises a plain ValueError for non-ASCII text
    secret = '{"auths": {"h": {"auth": "\u9594z"}}}'.encode()
    with pytest.raises(DockerConfigError, match="not base64"):
        parse_docker_config(secret)
