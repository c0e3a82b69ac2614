"""Per-response decisions of the proxy: forward these bytes, or send this NACK upstream.

The proxy does, for each response from istiod::

    plan = plan_response(data, flavour)          # WireError: the stream is broken, end it
    outcomes = {i: await cache.get(r.request) ... for i, r in enumerate(plan.remotes)}
                                                 # concurrently; exceptions are outcomes
    action = decide(plan, outcomes, mode, last_acked_version)
    Forward -> write action.data to Envoy; Nack -> write action.request upstream

Non-ECDS responses are planned from their type URL alone (no decode) and forwarded as the
same bytes object. ECDS responses without remote code are forwarded unchanged too; only
converted resources are re-encoded.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TypeAlias

from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf.message import DecodeError

from wasm_agent.xds.convert import (
    CachedModule,
    Converted,
    EcdsPlan,
    FailureMode,
    MalformedResource,
    Outcome,
    RemoteCode,
    Result,
    apply_ecds,
    plan_ecds,
)
from wasm_agent.xds.types import ECDS_TYPE, Flavour
from wasm_agent.xds.wire import RequestHead, WireError, response_head

INTERNAL = 13  # google.rpc.Code.INTERNAL, the code of an agent NACK

Response: TypeAlias = discovery_pb2.DiscoveryResponse | discovery_pb2.DeltaDiscoveryResponse


@dataclass(frozen=True)
class ResponsePlan:
    """What one response needs before it can be forwarded.

    ``remotes`` are the modules to fetch (empty for pass-through and rejected responses);
    ``rejection`` is set when a resource is malformed (``decide`` then NACKs).
    """

    flavour: Flavour
    type_url: str
    nonce: str
    data: bytes = field(repr=False)
    version: str = ""  # version_info (SotW) or system_version_info (Delta); ECDS only
    ecds: EcdsPlan | None = None
    rejection: MalformedResource | None = None
    _message: Response | None = field(default=None, repr=False, compare=False)

    @property
    def is_ecds(self) -> bool:
        return self.type_url == ECDS_TYPE

    @property
    def remotes(self) -> tuple[RemoteCode, ...]:
        return self.ecds.remotes if self.ecds is not None else ()


@dataclass(frozen=True)
class Forward:
    """Send ``data`` to Envoy. ``changed``: it differs from what istiod sent."""

    data: bytes = field(repr=False)
    results: tuple[Result, ...] = ()  # wasm_config_conversion_count labels (ECDS only)
    modules: tuple[CachedModule, ...] = ()  # modules the forwarded config uses
    failures: tuple[str, ...] = ()  # fetch failures replaced by RBAC filters
    changed: bool = False
    holds: tuple[tuple[str, CachedModule], ...] = ()  # (ECDS resource name, module) to hold


@dataclass(frozen=True)
class Nack:
    """Send ``request`` upstream instead; Envoy never sees the response."""

    request: bytes = field(repr=False)
    message: str
    results: tuple[Result, ...] = ()
    nonce: str = ""


def plan_response(data: bytes, flavour: Flavour) -> ResponsePlan:
    """Plan a (Delta)DiscoveryResponse. Raises :class:`WireError` only if it does not parse.

    Malformed ECDS resources do not raise: the plan carries ``rejection`` and no remotes.
    """
    head = response_head(data)
    if head.type_url != ECDS_TYPE:
        return ResponsePlan(flavour, head.type_url, head.nonce, data)
    message: Response
    if flavour is Flavour.SOTW:
        message = discovery_pb2.DiscoveryResponse()
    else:
        message = discovery_pb2.DeltaDiscoveryResponse()
    try:
        message.ParseFromString(data)
    except DecodeError as exc:
        raise WireError(f"ECDS response does not parse: {exc}") from None
    if isinstance(message, discovery_pb2.DiscoveryResponse):
        version = message.version_info
        resources = list(message.resources)
        names: list[str] = []
    else:
        version = message.system_version_info
        resources = [r.resource if r.HasField("resource") else None for r in message.resources]
        names = [r.name for r in message.resources]
    try:
        ecds = plan_ecds(resources, names)
    except MalformedResource as exc:
        return ResponsePlan(flavour, head.type_url, head.nonce, data, version, None, exc, message)
    return ResponsePlan(flavour, head.type_url, head.nonce, data, version, ecds, None, message)


def decide(
    plan: ResponsePlan,
    outcomes: Mapping[int, Outcome],
    mode: FailureMode,
    last_acked_version: str = "",
) -> Forward | Nack:
    """Turn a plan and the fetch outcomes (by remote index) into the bytes to send.

    ``last_acked_version`` is the ECDS version Envoy last ACKed on this stream (SotW NACKs
    carry it as ``version_info``).
    """
    if plan.rejection is not None:
        labels = _rejection_results(plan)
        return _nack(plan, str(plan.rejection), last_acked_version, labels)
    if plan.ecds is None:
        return Forward(plan.data)
    if not plan.ecds.remotes:
        return Forward(plan.data, plan.ecds.results())
    applied = apply_ecds(plan.ecds, outcomes, mode)
    if not isinstance(applied, Converted):
        return _nack(plan, applied.message, last_acked_version, applied.results)
    data = converted_response(plan, applied)
    return Forward(
        data, applied.results, applied.modules, applied.failures, changed=True, holds=applied.holds
    )


def _rejection_results(plan: ResponsePlan) -> tuple[Result, ...]:
    assert plan.rejection is not None
    count = len(plan._message.resources) if plan._message is not None else 0
    labels = [Result.NO_REMOTE_LOAD] * count
    for problem in plan.rejection.problems:
        if problem.index < count:
            labels[problem.index] = problem.result
    return tuple(labels)


MAX_NACK_MESSAGE = 4096  # characters of error_detail; a hostile response may be megabytes


def bounded_message(message: str, limit: int = MAX_NACK_MESSAGE) -> str:
    """``message`` cut to ``limit`` characters, saying how much was left out.

    A NACK quotes parts of the response (names, type URLs); the control plane controls their
    size, and the NACK goes upstream and into the log.
    """
    if len(message) <= limit:
        return message
    kept = limit - 40
    return f"{message[:kept]}... ({len(message) - kept} more characters)"


def _nack(plan: ResponsePlan, message: str, version: str, results: tuple[Result, ...]) -> Nack:
    message = bounded_message(message)
    request = nack_request(plan.flavour, plan.type_url, plan.nonce, message, version)
    return Nack(request, message, results, plan.nonce)


def unparsable(data: bytes, flavour: Flavour, error: WireError, version_info: str = "") -> Nack:
    """The NACK for a response :func:`plan_response` could not parse (it raised ``error``)."""
    head = response_head(data)  # the proxy already scanned the head: this does not raise
    message = bounded_message(f"ECDS response does not parse: {error}")
    request = nack_request(flavour, head.type_url, head.nonce, message, version_info)
    return Nack(request, message, (), head.nonce)


def nack_request(
    flavour: Flavour, type_url: str, nonce: str, message: str, version_info: str = ""
) -> bytes:
    """A serialized NACK: error_detail {code: INTERNAL, message}; no node.

    SotW: DiscoveryRequest{version_info, type_url, response_nonce, error_detail};
    Delta: DeltaDiscoveryRequest{type_url, response_nonce, error_detail} (``version_info``
    is ignored).
    """
    request: discovery_pb2.DiscoveryRequest | discovery_pb2.DeltaDiscoveryRequest
    if flavour is Flavour.SOTW:
        request = discovery_pb2.DiscoveryRequest(
            version_info=version_info, type_url=type_url, response_nonce=nonce
        )
    else:
        request = discovery_pb2.DeltaDiscoveryRequest(type_url=type_url, response_nonce=nonce)
    request.error_detail.code = INTERNAL
    request.error_detail.message = message
    return request.SerializeToString()


def converted_response(plan: ResponsePlan, converted: Converted) -> bytes:
    """The planned response with the converted resources replaced; everything else kept."""
    if plan._message is None:
        raise ValueError("not an ECDS plan")
    if not converted.replacements:
        return plan.data
    message = type(plan._message)()
    message.CopyFrom(plan._message)
    if isinstance(message, discovery_pb2.DiscoveryResponse):
        for index, resource in converted.replacements.items():
            message.resources[index].CopyFrom(resource)
    else:
        for index, resource in converted.replacements.items():
            message.resources[index].resource.CopyFrom(resource)
    return message.SerializeToString()


# -- Envoy's requests ---------------------------------------------------------------------------


def acked_ecds_version(head: RequestHead, flavour: Flavour, current: str) -> str:
    """The ECDS version Envoy runs once it has sent the request ``head`` (what a SotW NACK of
    the agent carries as ``version_info``): an ECDS ACK sets it; an ECDS NACK, other types and
    Delta requests (no ``version_info``) leave ``current``."""
    if flavour is Flavour.SOTW and head.type_url == ECDS_TYPE and not head.nack:
        return head.version_info
    return current


def with_node(raw: bytes, flavour: Flavour, node: base_pb2.Node | None) -> bytes:
    """Envoy's request ``raw``, re-sent first on a new upstream stream: with ``node`` added when
    it has none (Envoy sends its node on its first request only; istiod needs it on each
    stream). The same bytes when nothing changes."""
    if node is None:
        return raw
    request: discovery_pb2.DiscoveryRequest | discovery_pb2.DeltaDiscoveryRequest
    if flavour is Flavour.SOTW:
        request = discovery_pb2.DiscoveryRequest.FromString(raw)
    else:
        request = discovery_pb2.DeltaDiscoveryRequest.FromString(raw)
    if request.HasField("node"):
        return raw
    request.node.CopyFrom(node)
    return request.SerializeToString()
