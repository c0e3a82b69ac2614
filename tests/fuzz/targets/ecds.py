"""``plan_response`` + ``decide`` (``wasm_agent.xds.decide``) on mutated ECDS responses.

Input: byte 0 picks the flavour (bit 0: SotW/Delta), the fetch outcomes (bits 1-2: all cached,
all failed, alternating, checksum mismatch); the rest is the serialized (Delta)DiscoveryResponse.
Only :class:`WireError` may escape. Every plan is decided in both failure modes; a Forward of an
ECDS response must parse and a NACK must be a well-formed request naming the nonce. A pull
secret that occurs once in the input (in its ``ISTIO_META_WASM_IMAGE_PULL_SECRET`` variable)
must never appear in a NACK message, a failure text or a converted response.
"""

from __future__ import annotations

from pathlib import Path

from envoy.service.discovery.v3 import discovery_pb2

from wasm_agent.cache import CachedModule
from wasm_agent.fetch.errors import ChecksumMismatch, DownloadFailure, FetchError
from wasm_agent.xds.convert import FailureMode
from wasm_agent.xds.decide import INTERNAL, Forward, Nack, ResponsePlan, decide, plan_response
from wasm_agent.xds.types import Flavour
from wasm_agent.xds.wire import WireError

ALLOWED: tuple[type[BaseException], ...] = (WireError,)
MAX_LEN = 8192


def _outcome(pattern: int, index: int, url: str) -> CachedModule | FetchError:
    if pattern == 0 or (pattern == 2 and index % 2 == 0):
        return CachedModule(
            Path(f"/cache/modules/{index:064x}.wasm"), f"{index:064x}", url, 8, True
        )
    if pattern == 3:
        return ChecksumMismatch(url, "expected aaaa, got bbbb")
    return DownloadFailure(url, "registry answered HTTP 503")


def _check_nack(plan: ResponsePlan, action: Nack) -> None:
    cls = (
        discovery_pb2.DiscoveryRequest
        if plan.flavour is Flavour.SOTW
        else discovery_pb2.DeltaDiscoveryRequest
    )
    request = cls.FromString(action.request)
    assert request.response_nonce == plan.nonce, request
    assert request.type_url == plan.type_url, request
    assert request.error_detail.code == INTERNAL and request.error_detail.message, request


def _check_forward(plan: ResponsePlan, action: Forward) -> None:
    if not action.changed:
        assert action.data is plan.data or action.data == plan.data
        return
    cls = (
        discovery_pb2.DiscoveryResponse
        if plan.flavour is Flavour.SOTW
        else discovery_pb2.DeltaDiscoveryResponse
    )
    parsed = cls.FromString(action.data)
    assert parsed.nonce == plan.nonce and parsed.type_url == plan.type_url
    assert len(parsed.resources) == len(plan._message.resources)


def fuzz_one(data: bytes) -> None:
    """Plan and decide one response (see the module docstring)."""
    if not data:
        return
    flavour = Flavour.DELTA if data[0] & 1 else Flavour.SOTW
    pattern = (data[0] >> 1) & 3
    message = data[1:]
    plan = plan_response(message, flavour)  # WireError: the upstream stream is ended
    if plan.rejection is not None:
        assert not plan.remotes
    outcomes = {i: _outcome(pattern, i, r.request.url) for i, r in enumerate(plan.remotes)}
    secrets = [
        r.request.pull_secret
        for r in plan.remotes
        if r.request.pull_secret and len(r.request.pull_secret) >= 16
    ]
    unique = [s for s in secrets if message.count(s) == 1]
    for mode in FailureMode:
        action = decide(plan, outcomes, mode, "v-last")
        if isinstance(action, Nack):
            _check_nack(plan, action)
            texts = [action.message.encode()]
        else:
            assert isinstance(action, Forward), action
            _check_forward(plan, action)
            texts = [f.encode() for f in action.failures]
            if action.changed:
                texts.append(action.data)
        for secret in unique:
            assert not any(secret in text for text in texts), "pull secret leaked"
