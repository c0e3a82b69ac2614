"""ECDS conversion: detection, remote -> local rewrite, agent env, fallbacks, malformed input."""

from __future__ import annotations

import pytest
from envoy.config.core.v3 import extension_pb2
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as http_rbac_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.http.wasm.v3 import wasm_pb2 as http_wasm_pb2
from envoy.extensions.filters.network.rbac.v3 import rbac_pb2 as network_rbac_pb2
from envoy.extensions.filters.network.wasm.v3 import wasm_pb2 as network_wasm_pb2
from envoy.extensions.wasm.v3 import wasm_pb2
from google.protobuf import any_pb2

from tests.xds.ecds_builders import (
    SECRET,
    SHA,
    URL,
    extension,
    module,
    packed,
    typed_struct,
    unpack_extension,
    wasm_filter,
)
from wasm_agent.cache import PullPolicy
from wasm_agent.fetch.errors import ChecksumMismatch, DownloadFailure
from wasm_agent.xds.convert import (
    Converted,
    FailureMode,
    MalformedResource,
    Outcome,
    Reject,
    Result,
    apply_ecds,
    plan_ecds,
)
from wasm_agent.xds.types import (
    HTTP_RBAC_TYPE,
    HTTP_WASM_TYPE,
    NETWORK_RBAC_TYPE,
    NETWORK_WASM_TYPE,
)

AGENT_ENV = {
    "ISTIO_META_WASM_IMAGE_PULL_SECRET": SECRET,
    "ISTIO_META_WASM_IMAGE_PULL_POLICY": "Always",
    "ISTIO_META_WASM_PLUGIN_RESOURCE_VERSION": "12345",
    "ISTIO_META_OTHER": "x",
    "USER_KEY": "kept",
}


def convert_one(resource: any_pb2.Any, outcome=None, mode=FailureMode.NACK):
    plan = plan_ecds([resource])
    assert len(plan.remotes) == 1
    result = apply_ecds(plan, {0: outcome if outcome is not None else module()}, mode)
    return plan, result


def rewritten_wasm(result: Converted, index: int = 0):
    config = unpack_extension(result.replacements[index])
    network = config.typed_config.type_url == NETWORK_WASM_TYPE
    wasm = network_wasm_pb2.Wasm() if network else http_wasm_pb2.Wasm()
    assert config.typed_config.Unpack(wasm)
    return config, wasm


@pytest.mark.parametrize("network", [False, True])
def test_direct_wasm_remote_becomes_local_file(network: bool) -> None:
    plan, result = convert_one(extension("ns.authz", wasm_filter(network=network)))
    remote = plan.remotes[0]
    assert (remote.resource_name, remote.network, remote.fail_open) == ("ns.authz", network, False)
    assert remote.request.url == URL
    assert remote.request.resource_name == "ns.authz"
    assert isinstance(result, Converted)
    assert result.results == (Result.SUCCESS,)
    assert result.modules == (module(),)
    config, wasm = rewritten_wasm(result)
    assert config.name == "ns.authz"
    assert config.typed_config.type_url == (NETWORK_WASM_TYPE if network else HTTP_WASM_TYPE)
    code = wasm.config.vm_config.code
    assert code.WhichOneof("specifier") == "local"
    assert code.local.filename == "/var/cache/wasm/modules/abc.wasm"
    # everything else of the filter is kept
    expected = wasm_filter(network=network)
    expected.config.vm_config.code.local.filename = code.local.filename
    assert wasm == expected


@pytest.mark.parametrize("kind", ["udpa", "xds"])
@pytest.mark.parametrize("network", [False, True])
def test_typed_struct_is_unwrapped_to_the_direct_wasm_type(kind: str, network: bool) -> None:
    filter_config = wasm_filter(network=network, sha256=SHA)
    plan, result = convert_one(extension("ts", typed_struct(filter_config, kind)))
    assert plan.remotes[0].network is network
    assert plan.remotes[0].request.sha256 == SHA
    config, wasm = rewritten_wasm(result)
    assert config.typed_config.type_url == (NETWORK_WASM_TYPE if network else HTTP_WASM_TYPE)
    assert wasm.config.name == "authz"
    assert wasm.config.vm_config.code.local.filename.endswith("abc.wasm")


def test_typed_struct_of_another_type_passes_through() -> None:
    plan = plan_ecds([extension("router", typed_struct(router_pb2.Router()))])
    assert plan.remotes == ()
    assert plan.results() == (Result.NO_REMOTE_LOAD,)


@pytest.mark.parametrize(
    "typed",
    [
        wasm_filter(local="/etc/wasm/plugin.wasm"),
        wasm_filter(network=True, local="/etc/wasm/plugin.wasm"),
        typed_struct(wasm_filter(local="/etc/wasm/plugin.wasm")),
        router_pb2.Router(),
        http_rbac_pb2.RBAC(rules_stat_prefix="mine"),
    ],
    ids=["http-local", "network-local", "typed-struct-local", "router", "rbac"],
)
def test_local_code_and_other_filters_are_not_converted(typed) -> None:
    plan = plan_ecds([extension("other", typed)])
    assert plan.remotes == ()
    result = apply_ecds(plan, {}, FailureMode.NACK)
    assert isinstance(result, Converted)
    assert result.replacements == {}
    assert result.results == (Result.NO_REMOTE_LOAD,)


def test_resource_without_body_is_skipped() -> None:
    assert plan_ecds([None]).remotes == ()


@pytest.mark.parametrize(
    ("given", "expected"),
    [("nil", None), ("", None), (SHA, SHA), ("sha256:" + SHA.upper(), SHA)],
)
def test_sha256_normalised(given: str, expected: str | None) -> None:
    plan = plan_ecds([extension("x", wasm_filter(sha256=given))])
    assert plan.remotes[0].request.sha256 == expected


@pytest.mark.parametrize(("timeout", "expected"), [(30, 30.0), (1.5, 1.5), (None, None), (0, None)])
def test_timeout_from_http_uri(timeout, expected) -> None:
    plan = plan_ecds([extension("x", wasm_filter(timeout=timeout))])
    assert plan.remotes[0].request.timeout == expected


def test_agent_env_is_consumed_and_stripped() -> None:
    resource = extension("x", wasm_filter(env=AGENT_ENV, host_env_keys=["POD_NAME"]))
    plan, result = convert_one(resource)
    request = plan.remotes[0].request
    assert request.pull_secret == SECRET.encode()
    assert request.pull_policy is PullPolicy.ALWAYS
    assert request.resource_version == "12345"
    _, wasm = rewritten_wasm(result)
    env = wasm.config.vm_config.environment_variables
    assert dict(env.key_values) == {"USER_KEY": "kept"}
    assert list(env.host_env_keys) == ["POD_NAME"]
    data = result.replacements[0].SerializeToString()
    assert SECRET.encode() not in data
    assert b"ISTIO_META" not in data
    for text in (repr(plan), repr(plan.remotes), repr(result)):
        assert SECRET not in text


def test_environment_removed_when_only_agent_keys() -> None:
    env = {"ISTIO_META_WASM_PLUGIN_RESOURCE_VERSION": "1"}
    _, result = convert_one(extension("x", wasm_filter(env=env)))
    _, wasm = rewritten_wasm(result)
    assert not wasm.config.vm_config.HasField("environment_variables")


def test_secret_in_typed_struct_is_stripped() -> None:
    resource = extension("x", typed_struct(wasm_filter(env=AGENT_ENV), "xds"))
    plan, result = convert_one(resource)
    assert plan.remotes[0].request.pull_secret == SECRET.encode()
    assert SECRET.encode() not in result.replacements[0].SerializeToString()


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        ("IfNotPresent", PullPolicy.IF_NOT_PRESENT),
        ("Always", PullPolicy.ALWAYS),
        ("UNSPECIFIED_POLICY", PullPolicy.UNSPECIFIED),
        ("bogus", PullPolicy.UNSPECIFIED),
    ],
)
def test_pull_policy(policy: str, expected: PullPolicy) -> None:
    env = {"ISTIO_META_WASM_IMAGE_PULL_POLICY": policy}
    plan = plan_ecds([extension("x", wasm_filter(env=env))])
    assert plan.remotes[0].request.pull_policy is expected
    assert plan.remotes[0].request.pull_secret is None


@pytest.mark.parametrize(
    ("policy", "fail_open", "expected"),
    [
        (wasm_pb2.FAIL_OPEN, None, True),
        (wasm_pb2.FAIL_CLOSED, None, False),
        (wasm_pb2.FAIL_RELOAD, None, False),
        (None, True, True),  # deprecated flag, policy unspecified
        (None, None, False),
        (wasm_pb2.FAIL_CLOSED, True, False),  # the policy wins over the flag
    ],
)
def test_fail_open_detection(policy, fail_open, expected: bool) -> None:
    config = wasm_filter(failure_policy=policy, fail_open=fail_open)
    assert plan_ecds([extension("x", config)]).remotes[0].fail_open is expected


def rbac_of(result: Converted, network: bool):
    config = unpack_extension(result.replacements[0])
    rbac = network_rbac_pb2.RBAC() if network else http_rbac_pb2.RBAC()
    assert config.typed_config.type_url == (NETWORK_RBAC_TYPE if network else HTTP_RBAC_TYPE)
    assert config.typed_config.Unpack(rbac)
    return config, rbac


@pytest.mark.parametrize("mode", list(FailureMode))
@pytest.mark.parametrize("network", [False, True])
def test_fail_open_failure_becomes_allow_all_rbac(network: bool, mode: FailureMode) -> None:
    resource = extension("ns.open", wasm_filter(network=network, failure_policy=wasm_pb2.FAIL_OPEN))
    error = DownloadFailure(URL, "connection refused")
    _, result = convert_one(resource, error, mode)
    assert isinstance(result, Converted)
    assert result.results == (Result.FETCH_FAILURE,)
    assert result.modules == ()
    config, rbac = rbac_of(result, network)
    assert config.name == "ns.open"
    if network:
        assert rbac == network_rbac_pb2.RBAC(stat_prefix="wasm-default-allow")
    else:
        assert rbac == http_rbac_pb2.RBAC(rules_stat_prefix="wasm-default-allow")
    assert not rbac.HasField("rules")
    assert "ns.open" in result.failures[0] and "allow-all" in result.failures[0]


@pytest.mark.parametrize("network", [False, True])
def test_deny_mode_fail_closed_failure_becomes_deny_all_rbac(network: bool) -> None:
    resource = extension("ns.closed", wasm_filter(network=network))
    _, result = convert_one(resource, ChecksumMismatch(URL, "sha256 differs"), FailureMode.DENY)
    assert isinstance(result, Converted)
    config, rbac = rbac_of(result, network)
    assert config.name == "ns.closed"
    assert rbac.HasField("rules") and len(rbac.rules.policies) == 0
    prefix = rbac.stat_prefix if network else rbac.rules_stat_prefix
    assert prefix == "wasm-default-deny"


def test_nack_mode_fail_closed_failure_rejects() -> None:
    resource = extension("ns.closed", wasm_filter(env=AGENT_ENV))
    error = DownloadFailure("https://user:pw@example.com/m.wasm?token=t", "HTTP 404")
    _, result = convert_one(resource, error, FailureMode.NACK)
    assert isinstance(result, Reject)
    assert "ns.closed" in result.message and "HTTP 404" in result.message
    assert result.results == (Result.FETCH_FAILURE,)
    for secret in (SECRET, "pw", "token=t"):
        assert secret not in result.message


def test_unexpected_exception_is_a_fetch_failure() -> None:
    _, result = convert_one(extension("x", wasm_filter()), OSError("disk on fire"))
    assert isinstance(result, Reject)
    assert "OSError: disk on fire" in result.message


def test_multiple_remotes_and_partial_failure() -> None:
    resources = [
        extension("a", wasm_filter()),
        extension("local", wasm_filter(local="/x.wasm")),
        extension("b", wasm_filter(network=True, url="https://example.com/b.wasm")),
        extension("c", wasm_filter(failure_policy=wasm_pb2.FAIL_OPEN)),
    ]
    plan = plan_ecds(resources)
    assert [(r.resource_name, r.index) for r in plan.remotes] == [("a", 0), ("b", 2), ("c", 3)]
    ok: dict[int, Outcome] = {0: module("m0"), 1: module("m1"), 2: module("m2")}
    result = apply_ecds(plan, ok, FailureMode.NACK)
    assert isinstance(result, Converted)
    assert sorted(result.replacements) == [0, 2, 3]
    assert result.results == (Result.SUCCESS, Result.NO_REMOTE_LOAD, Result.SUCCESS, Result.SUCCESS)
    assert rewritten_wasm(result, 2)[1].config.vm_config.code.local.filename.endswith("m1.wasm")
    # one fail-closed failure rejects everything in NACK mode
    failed = {**ok, 1: DownloadFailure("https://example.com/b.wasm", "timeout")}
    rejected = apply_ecds(plan, failed, FailureMode.NACK)
    assert isinstance(rejected, Reject)
    assert "'b'" in rejected.message and "'a'" not in rejected.message
    # a fail-open failure alongside successes
    opened = apply_ecds(plan, {**ok, 2: DownloadFailure(URL, "x")}, FailureMode.NACK)
    assert isinstance(opened, Converted)
    assert unpack_extension(opened.replacements[3]).typed_config.type_url == HTTP_RBAC_TYPE
    assert len(opened.modules) == 2


def test_apply_does_not_change_the_plan() -> None:
    plan = plan_ecds([extension("x", wasm_filter(env=AGENT_ENV))])
    first = apply_ecds(plan, {0: module("one")}, FailureMode.NACK)
    second = apply_ecds(plan, {0: module("two")}, FailureMode.NACK)
    assert isinstance(first, Converted) and isinstance(second, Converted)
    assert rewritten_wasm(first)[1].config.vm_config.code.local.filename.endswith("one.wasm")
    assert rewritten_wasm(second)[1].config.vm_config.code.local.filename.endswith("two.wasm")


def test_missing_outcome_is_a_caller_error() -> None:
    plan = plan_ecds([extension("x", wasm_filter())])
    with pytest.raises(ValueError, match="no outcome"):
        apply_ecds(plan, {}, FailureMode.NACK)


def malformed(resource, names=()) -> MalformedResource:
    with pytest.raises(MalformedResource) as caught:
        plan_ecds([resource], names)
    return caught.value


def test_not_a_typed_extension_config() -> None:
    error = malformed(packed(wasm_filter()), ["by-name"])
    assert "by-name" in str(error) and "is not envoy.config.core.v3.TypedExtensionConfig" in str(
        error
    )
    assert error.problems[0].result is Result.UNMARSHAL_FAILURE


def test_any_that_does_not_parse() -> None:
    bad = any_pb2.Any(type_url=extension("x", router_pb2.Router()).type_url, value=b"\xff\xff")
    assert "does not parse as a TypedExtensionConfig" in str(malformed(bad))


def test_wasm_type_url_with_other_payload() -> None:
    typed = any_pb2.Any(type_url=HTTP_WASM_TYPE, value=b"\x0a\x05\x0a\x03\xff\xfe\xfd")
    error = malformed(extension("claims-wasm", typed))
    assert "claims-wasm" in str(error) and "envoy.extensions.filters.http.wasm.v3.Wasm" in str(
        error
    )


def test_typed_struct_that_does_not_parse() -> None:
    from wasm_agent.xds.types import UDPA_TYPED_STRUCT_TYPE

    typed = any_pb2.Any(type_url=UDPA_TYPED_STRUCT_TYPE, value=b"\x12\x03\x0a\x01")
    assert "does not parse as udpa.type.v1.TypedStruct" in str(malformed(extension("ts", typed)))


def test_typed_struct_that_does_not_convert_hides_the_secret() -> None:
    typed = typed_struct(wasm_filter(env=AGENT_ENV))
    from udpa.type.v1 import typed_struct_pb2

    wrapper = typed_struct_pb2.TypedStruct()
    typed.Unpack(wrapper)
    wrapper.value["config"]["vmConfig"]["environmentVariables"]["keyValues"]["BAD"] = 5
    wrapper.value["config"]["noSuchField"] = SECRET
    typed.Pack(wrapper)
    error = malformed(extension("ts", typed))
    assert "does not convert to envoy.extensions.filters.http.wasm.v3.Wasm" in str(error)
    assert SECRET not in str(error)


def test_no_typed_config() -> None:
    resource = packed(extension_pb2.TypedExtensionConfig(name="empty"))
    assert "'empty': has no typed_config" in str(malformed(resource))


def test_wasm_without_code() -> None:
    wasm = http_wasm_pb2.Wasm()
    wasm.config.name = "nocode"
    assert "neither remote nor local code" in str(malformed(extension("nocode", wasm)))


def test_remote_without_url() -> None:
    error = malformed(extension("nourl", wasm_filter(url=None)))
    assert "no http_uri.uri" in str(error)
    assert error.problems[0].result is Result.MISS_REMOTE_FETCH_HINT


@pytest.mark.parametrize("url", ["ftp://h/m.wasm", "file:///etc/passwd", "registry/m:1", "x:y"])
def test_unsupported_scheme(url: str) -> None:
    error = malformed(extension("scheme", wasm_filter(url=url)))
    assert "unsupported Wasm module downloading URL scheme" in str(error)


def test_empty_pull_secret() -> None:
    error = malformed(extension("sec", wasm_filter(env={"ISTIO_META_WASM_IMAGE_PULL_SECRET": ""})))
    assert "missing image pull secret" in str(error)
    assert error.problems[0].result is Result.FETCH_FAILURE


def test_every_malformed_resource_is_listed() -> None:
    resources = [
        extension("good", wasm_filter()),
        extension("bad1", wasm_filter(url="ftp://x")),
        packed(router_pb2.Router()),
    ]
    with pytest.raises(MalformedResource) as caught:
        plan_ecds(resources)
    assert [p.index for p in caught.value.problems] == [1, 2]
    assert "bad1" in str(caught.value) and "#2" in str(caught.value)
