"""Per-response decisions: forward bytes or NACK, for SotW and Delta streams."""

from __future__ import annotations

import pytest
from envoy.config.core.v3 import base_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.http.wasm.v3 import wasm_pb2 as http_wasm_pb2
from envoy.extensions.wasm.v3 import wasm_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import any_pb2

from tests.xds.ecds_builders import (
    SECRET,
    URL,
    delta_response,
    extension,
    module,
    packed,
    sotw_response,
    unpack_extension,
    wasm_filter,
)
from wasm_agent.fetch.errors import DownloadFailure
from wasm_agent.xds.convert import FailureMode, Result
from wasm_agent.xds.decide import (
    Forward,
    Nack,
    acked_ecds_version,
    decide,
    nack_request,
    plan_response,
    with_node,
)
from wasm_agent.xds.types import CLUSTER_TYPE, ECDS_TYPE, HTTP_RBAC_TYPE, Flavour
from wasm_agent.xds.wire import WireError, request_head

SECRET_ENV = {"ISTIO_META_WASM_IMAGE_PULL_SECRET": SECRET}


def filename_of(resource: any_pb2.Any) -> str:
    wasm = http_wasm_pb2.Wasm()
    assert unpack_extension(resource).typed_config.Unpack(wasm)
    return wasm.config.vm_config.code.local.filename


def test_sotw_nack_shape_is_exact() -> None:
    data = nack_request(Flavour.SOTW, ECDS_TYPE, "nonce-7", "ECDS resource 'x': boom", "v6")
    request = discovery_pb2.DiscoveryRequest.FromString(data)
    expected = discovery_pb2.DiscoveryRequest(
        version_info="v6", type_url=ECDS_TYPE, response_nonce="nonce-7"
    )
    expected.error_detail.code = 13
    expected.error_detail.message = "ECDS resource 'x': boom"
    assert request == expected
    assert not request.HasField("node")


def test_delta_nack_shape_is_exact() -> None:
    data = nack_request(Flavour.DELTA, ECDS_TYPE, "dn", "why", "ignored")
    request = discovery_pb2.DeltaDiscoveryRequest.FromString(data)
    expected = discovery_pb2.DeltaDiscoveryRequest(type_url=ECDS_TYPE, response_nonce="dn")
    expected.error_detail.code = 13
    expected.error_detail.message = "why"
    assert request == expected


def test_non_ecds_response_is_forwarded_without_decoding() -> None:
    response = discovery_pb2.DiscoveryResponse(type_url=CLUSTER_TYPE, nonce="c1")
    # a resource that a full decode of the clusters would choke on
    response.resources.add(type_url=CLUSTER_TYPE, value=b"\xff\xff\xff")
    data = response.SerializeToString()
    plan = plan_response(data, Flavour.SOTW)
    assert (plan.is_ecds, plan.remotes, plan.nonce) == (False, (), "c1")
    action = decide(plan, {}, FailureMode.NACK)
    assert isinstance(action, Forward)
    assert action.data is data and not action.changed and action.results == ()


def test_ecds_without_remote_code_is_forwarded_as_is() -> None:
    data = sotw_response([extension("local", wasm_filter(local="/a.wasm"))]).SerializeToString()
    plan = plan_response(data, Flavour.SOTW)
    action = decide(plan, {}, FailureMode.NACK)
    assert isinstance(action, Forward)
    assert action.data is data
    assert action.results == (Result.NO_REMOTE_LOAD,)


def test_sotw_conversion_keeps_the_envelope_and_untouched_resources() -> None:
    untouched = extension("router", router_pb2.Router())
    response = sotw_response([untouched, extension("wasm", wasm_filter(env=SECRET_ENV))])
    response.canary = True
    response.control_plane.identifier = "istiod-1"
    plan = plan_response(response.SerializeToString(), Flavour.SOTW)
    assert plan.version == "v7"
    assert [r.index for r in plan.remotes] == [1]
    action = decide(plan, {0: module()}, FailureMode.NACK, last_acked_version="v6")
    assert isinstance(action, Forward) and action.changed
    assert SECRET.encode() not in action.data
    out = discovery_pb2.DiscoveryResponse.FromString(action.data)
    assert (out.version_info, out.nonce, out.type_url, out.canary) == (
        "v7",
        "nonce-7",
        ECDS_TYPE,
        True,
    )
    assert out.control_plane.identifier == "istiod-1"
    assert out.resources[0].SerializeToString() == untouched.SerializeToString()
    assert filename_of(out.resources[1]) == str(module().path)
    assert action.results == (Result.NO_REMOTE_LOAD, Result.SUCCESS)
    assert action.modules == (module(),)
    assert action.holds == (("wasm", module()),)  # what the converter holds once forwarded


def test_sotw_fetch_failure_nacks_with_last_acked_version() -> None:
    data = sotw_response([extension("ns.plugin", wasm_filter(env=SECRET_ENV))]).SerializeToString()
    plan = plan_response(data, Flavour.SOTW)
    error = DownloadFailure(URL, "HTTP 503 after 5 attempts")
    action = decide(plan, {0: error}, FailureMode.NACK, last_acked_version="v6")
    assert isinstance(action, Nack)
    request = discovery_pb2.DiscoveryRequest.FromString(action.request)
    assert request.version_info == "v6"
    assert (request.type_url, request.response_nonce) == (ECDS_TYPE, "nonce-7")
    assert request.error_detail.code == 13
    assert "ns.plugin" in request.error_detail.message
    assert "HTTP 503" in request.error_detail.message
    assert SECRET not in request.error_detail.message and SECRET.encode() not in action.request
    assert action.message == request.error_detail.message
    assert action.results == (Result.FETCH_FAILURE,)


def test_deny_mode_forwards_a_deny_filter_instead_of_nacking() -> None:
    data = sotw_response([extension("ns.plugin", wasm_filter())]).SerializeToString()
    plan = plan_response(data, Flavour.SOTW)
    action = decide(plan, {0: DownloadFailure(URL, "x")}, FailureMode.DENY)
    assert isinstance(action, Forward)
    out = discovery_pb2.DiscoveryResponse.FromString(action.data)
    assert unpack_extension(out.resources[0]).typed_config.type_url == HTTP_RBAC_TYPE
    assert len(action.failures) == 1
    assert action.holds == ()  # nothing of the cache is in use


def test_mixed_good_and_bad_resources_nack_the_whole_response() -> None:
    resources = [
        extension("good", wasm_filter()),
        extension("bad", wasm_filter(url="ftp://h/x.wasm", env=SECRET_ENV)),
        extension("open", wasm_filter(failure_policy=wasm_pb2.FAIL_OPEN)),
    ]
    data = sotw_response(resources).SerializeToString()
    plan = plan_response(data, Flavour.SOTW)
    assert plan.rejection is not None
    assert plan.remotes == ()  # nothing to fetch
    action = decide(plan, {}, FailureMode.DENY, last_acked_version="v1")
    assert isinstance(action, Nack)
    assert "'bad'" in action.message and "unsupported Wasm module downloading URL scheme" in (
        action.message
    )
    assert SECRET not in action.message
    assert action.results == (
        Result.NO_REMOTE_LOAD,
        Result.UNMARSHAL_FAILURE,
        Result.NO_REMOTE_LOAD,
    )
    assert discovery_pb2.DiscoveryRequest.FromString(action.request).version_info == "v1"


def test_malformed_any_nacks() -> None:
    bad = any_pb2.Any(type_url=ECDS_TYPE, value=b"\x0a\x80")
    data = sotw_response([bad]).SerializeToString()
    action = decide(plan_response(data, Flavour.SOTW), {}, FailureMode.NACK)
    assert isinstance(action, Nack)
    assert "does not parse" in action.message


def test_undecodable_ecds_response_raises_wire_error() -> None:
    data = discovery_pb2.DiscoveryResponse(type_url=ECDS_TYPE).SerializeToString() + b"\x12\x05ab"
    with pytest.raises(WireError):
        plan_response(data, Flavour.SOTW)


def test_delta_conversion_preserves_names_versions_and_removals() -> None:
    untouched = extension("router", router_pb2.Router())
    response = delta_response(
        [("wasm", extension("wasm", wasm_filter())), ("router", untouched), ("heartbeat", None)],
        removed=["gone-1", "gone-2"],
    )
    response.removed_resource_names.add(name="gone-3")
    plan = plan_response(response.SerializeToString(), Flavour.DELTA)
    assert plan.version == "sys-3"
    assert [(r.resource_name, r.index) for r in plan.remotes] == [("wasm", 0)]
    action = decide(plan, {0: module("d")}, FailureMode.NACK)
    assert isinstance(action, Forward)
    out = discovery_pb2.DeltaDiscoveryResponse.FromString(action.data)
    expected = discovery_pb2.DeltaDiscoveryResponse()
    expected.CopyFrom(response)
    expected.resources[0].resource.CopyFrom(out.resources[0].resource)
    assert out == expected  # everything but the converted body is identical
    assert filename_of(out.resources[0].resource) == str(module("d").path)
    assert out.resources[1].resource.SerializeToString() == untouched.SerializeToString()
    assert not out.resources[2].HasField("resource")


def test_delta_nack_uses_resource_name_for_unparseable_resources() -> None:
    response = delta_response([("by-delta-name", packed(router_pb2.Router()))])
    action = decide(
        plan_response(response.SerializeToString(), Flavour.DELTA), {}, FailureMode.NACK
    )
    assert isinstance(action, Nack)
    request = discovery_pb2.DeltaDiscoveryRequest.FromString(action.request)
    assert (request.type_url, request.response_nonce) == (ECDS_TYPE, "delta-nonce")
    assert request.error_detail.code == 13
    assert "by-delta-name" in request.error_detail.message


def test_delta_fetch_failure_nacks() -> None:
    response = delta_response([("w", extension("w", wasm_filter()))])
    plan = plan_response(response.SerializeToString(), Flavour.DELTA)
    action = decide(plan, {0: DownloadFailure(URL, "refused")}, FailureMode.NACK, "ignored")
    assert isinstance(action, Nack)
    request = discovery_pb2.DeltaDiscoveryRequest.FromString(action.request)
    assert request.response_nonce == "delta-nonce" and "refused" in request.error_detail.message


def test_no_secret_in_any_repr_or_output() -> None:
    data = sotw_response([extension("s", wasm_filter(env=SECRET_ENV))]).SerializeToString()
    plan = plan_response(data, Flavour.SOTW)
    assert plan.remotes[0].request.pull_secret == SECRET.encode()
    forward = decide(plan, {0: module()}, FailureMode.NACK)
    nack = decide(plan, {0: DownloadFailure(URL, "x")}, FailureMode.NACK)
    assert isinstance(forward, Forward) and SECRET.encode() not in forward.data
    assert isinstance(nack, Nack) and SECRET.encode() not in nack.request
    for text in (repr(plan), repr(plan.remotes), repr(forward), repr(nack), nack.message):
        assert SECRET not in text


def test_acked_ecds_version_follows_sotw_ecds_acks_only() -> None:
    def after(flavour: Flavour, current: str = "v1", **fields: object) -> str:
        sotw = flavour is Flavour.SOTW
        kind = discovery_pb2.DiscoveryRequest if sotw else discovery_pb2.DeltaDiscoveryRequest
        raw = kind(**fields).SerializeToString()
        return acked_ecds_version(request_head(raw, flavour), flavour, current)

    assert after(Flavour.SOTW, type_url=ECDS_TYPE, version_info="v2", response_nonce="n") == "v2"
    nack = {"code": 13, "message": "no"}
    assert after(Flavour.SOTW, type_url=ECDS_TYPE, version_info="v1", error_detail=nack) == "v1"
    assert after(Flavour.SOTW, type_url=CLUSTER_TYPE, version_info="c9") == "v1"
    assert after(Flavour.DELTA, type_url=ECDS_TYPE, response_nonce="n") == "v1"


@pytest.mark.parametrize("flavour", [Flavour.SOTW, Flavour.DELTA])
def test_the_first_replayed_request_carries_the_node(flavour: Flavour) -> None:
    node = base_pb2.Node(id="sidecar~10.0.0.1~pod.ns~ns.svc.cluster.local", cluster="c")
    kind = (
        discovery_pb2.DiscoveryRequest
        if flavour is Flavour.SOTW
        else discovery_pb2.DeltaDiscoveryRequest
    )
    bare = kind(type_url=CLUSTER_TYPE).SerializeToString()
    added = kind.FromString(with_node(bare, flavour, node))
    assert added.node == node and added.type_url == CLUSTER_TYPE
    own = kind(type_url=CLUSTER_TYPE, node=base_pb2.Node(id="own")).SerializeToString()
    assert with_node(own, flavour, node) is own  # Envoy's own node is kept as sent
    assert with_node(bare, flavour, None) is bare


def test_a_nack_message_is_bounded_and_says_what_it_left_out() -> None:
    from wasm_agent.xds.decide import MAX_NACK_MESSAGE, bounded_message

    assert bounded_message("short") == "short"
    long = "x" * (8 * 2**20)
    bounded = bounded_message(long)
    assert len(bounded) <= MAX_NACK_MESSAGE
    assert bounded.endswith(f"... ({len(long) - (MAX_NACK_MESSAGE - 40)} more characters)")
