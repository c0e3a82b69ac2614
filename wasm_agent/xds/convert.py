"""ECDS conversion as pure functions: find remote Wasm code, then rewrite it to local files.

``plan_ecds`` reads the resources of one ECDS response and lists the remote code sources (one
per Wasm filter with ``vm_config.code.remote``); the proxy fetches them through the cache, then
``apply_ecds`` rewrites each converted resource (``code.local.filename``), replaces failed ones
by RBAC filters or rejects the response. No I/O here. Resources that are not Wasm, or Wasm with
local code, are never re-encoded: the caller keeps their original bytes.

Agent-only settings (every ``ISTIO_META_*`` key of ``vm_config.environment_variables``) are read
and stripped here; the pull secret lives only in the :class:`ModuleRequest` and never appears in
a message, a repr or the forwarded config.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeAlias
from urllib.parse import urlsplit

from envoy.config.core.v3 import extension_pb2
from envoy.extensions.filters.http.wasm.v3 import wasm_pb2 as http_wasm_pb2
from envoy.extensions.filters.network.wasm.v3 import wasm_pb2 as network_wasm_pb2
from envoy.extensions.wasm.v3 import wasm_pb2
from google.protobuf import any_pb2
from google.protobuf.message import DecodeError, EncodeError

from wasm_agent.cache import CachedModule, ModuleRequest, PullPolicy
from wasm_agent.core.errors import WasmAgentError
from wasm_agent.core.logs import redact_url
from wasm_agent.fetch.errors import FetchError
from wasm_agent.fetch.model import normalize_sha256
from wasm_agent.xds import rbac
from wasm_agent.xds.metrics import WASM_CONVERSION_COUNT
from wasm_agent.xds.typedstruct import StructError, unwrap_typed_struct
from wasm_agent.xds.types import HTTP_WASM_TYPE, NETWORK_WASM_TYPE, type_name

__all__ = [
    "CachedModule",
    "Converted",
    "EcdsPlan",
    "FailureMode",
    "MalformedResource",
    "ModuleRequest",
    "Problem",
    "Reject",
    "RemoteCode",
    "Result",
    "apply_ecds",
    "plan_ecds",
]

ISTIO_META_PREFIX = "ISTIO_META_"
PULL_SECRET_ENV = "ISTIO_META_WASM_IMAGE_PULL_SECRET"
PULL_POLICY_ENV = "ISTIO_META_WASM_IMAGE_PULL_POLICY"
RESOURCE_VERSION_ENV = "ISTIO_META_WASM_PLUGIN_RESOURCE_VERSION"
SUPPORTED_SCHEMES = frozenset({"http", "https", "oci"})
_PULL_POLICIES = {"IfNotPresent": PullPolicy.IF_NOT_PRESENT, "Always": PullPolicy.ALWAYS}

_ECDS_NAME = "envoy.config.core.v3.TypedExtensionConfig"
_WASM_TYPES = {
    type_name(HTTP_WASM_TYPE): (False, http_wasm_pb2.Wasm),
    type_name(NETWORK_WASM_TYPE): (True, network_wasm_pb2.Wasm),
}

WasmFilter: TypeAlias = http_wasm_pb2.Wasm | network_wasm_pb2.Wasm
# what one fetch gave: the module, or the exception it raised (``asyncio.gather`` style)
Outcome: TypeAlias = CachedModule | BaseException


class FailureMode(enum.Enum):
    """What a failed fetch of a fail-closed plugin does."""

    NACK = "nack"  # reject the whole response upstream; Envoy keeps its last good config
    DENY = "deny"  # replace the filter by a deny-all RBAC filter (Istio 1.25+)


class Result(enum.StrEnum):
    """Labels of ``wasm_config_conversion_count{result}``, one per resource."""

    SUCCESS = "success"
    NO_REMOTE_LOAD = "no_remote_load"
    MARSHAL_FAILURE = "marshal_failure"
    UNMARSHAL_FAILURE = "unmarshal_failure"
    FETCH_FAILURE = "fetch_failure"
    MISS_REMOTE_FETCH_HINT = "miss_remote_fetch_hint"


WASM_CONVERSION_COUNT.preset(result=tuple(Result))  # every result at 0 from the start


@dataclass(frozen=True)
class Problem:
    """Why one resource cannot be used (never names a secret)."""

    index: int
    resource: str
    cause: str
    result: Result = Result.UNMARSHAL_FAILURE

    def __str__(self) -> str:
        return f"ECDS resource {self.resource!r}: {self.cause}"


class MalformedResource(WasmAgentError, ValueError):
    """One or more ECDS resources are malformed: the response must be NACKed."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = tuple(problems)
        super().__init__("; ".join(str(p) for p in self.problems))


@dataclass(frozen=True)
class RemoteCode:
    """One remote code source found in one resource (``index`` into the resource list)."""

    resource_name: str
    request: ModuleRequest
    fail_open: bool
    network: bool
    index: int = 0


@dataclass(frozen=True)
class _Rewrite:
    """The resource to emit once the module is local: templates with code and env stripped."""

    type_url: str  # the resource's own Any type URL
    extension: extension_pb2.TypedExtensionConfig  # typed_config cleared
    wasm: WasmFilter  # vm_config.code cleared, ISTIO_META_* stripped


@dataclass(frozen=True)
class EcdsPlan:
    """The remote code sources of one ECDS response, and how to rewrite them."""

    count: int  # number of resources in the response
    remotes: tuple[RemoteCode, ...] = ()
    _rewrites: tuple[_Rewrite, ...] = field(default=(), repr=False, compare=False)

    def results(self) -> tuple[Result, ...]:
        """Per-resource labels before any fetch (``no_remote_load`` for pass-through ones)."""
        return tuple(Result.NO_REMOTE_LOAD for _ in range(self.count))


@dataclass(frozen=True)
class Converted:
    """Resources to forward: ``replacements`` maps a resource index to its new ``Any``."""

    replacements: Mapping[int, any_pb2.Any]
    results: tuple[Result, ...]
    modules: tuple[CachedModule, ...] = ()  # modules the forwarded config uses (hold them)
    failures: tuple[str, ...] = ()  # fetch failures replaced by RBAC filters (for the log)
    holds: tuple[tuple[str, CachedModule], ...] = ()  # (resource name, module) to hold


@dataclass(frozen=True)
class Reject:
    """The response must be NACKed with ``message``."""

    message: str
    results: tuple[Result, ...]


def plan_ecds(resources: Sequence[any_pb2.Any | None], names: Sequence[str] = ()) -> EcdsPlan:
    """Find the remote Wasm code sources in ECDS resources.

    ``resources`` are the ``Any`` resources of a DiscoveryResponse, or ``Resource.resource`` of
    a DeltaDiscoveryResponse (``None`` for a resource without a body); ``names`` optionally gives
    each resource's name for messages (Delta ``Resource.name``). Raises
    :class:`MalformedResource` listing every malformed resource.
    """
    remotes: list[RemoteCode] = []
    rewrites: list[_Rewrite] = []
    problems: list[Problem] = []
    for index, resource in enumerate(resources):
        hint = names[index] if index < len(names) and names[index] else f"#{index}"
        try:
            found = _plan_one(index, resource, hint)
        except _Bad as bad:
            problems.append(Problem(index, bad.resource, bad.cause, bad.result))
            continue
        if found is not None:
            remotes.append(found[0])
            rewrites.append(found[1])
    if problems:
        raise MalformedResource(problems)
    return EcdsPlan(count=len(resources), remotes=tuple(remotes), _rewrites=tuple(rewrites))


class _Bad(Exception):
    def __init__(self, resource: str, cause: str, result: Result = Result.UNMARSHAL_FAILURE):
        super().__init__(cause)
        self.resource, self.cause, self.result = resource, cause, result


def _plan_one(
    index: int, resource: any_pb2.Any | None, hint: str
) -> tuple[RemoteCode, _Rewrite] | None:
    if resource is None:
        return None
    if type_name(resource.type_url) != _ECDS_NAME:
        raise _Bad(hint, f"resource type {resource.type_url!r} is not {_ECDS_NAME}")
    extension = extension_pb2.TypedExtensionConfig()
    try:
        extension.ParseFromString(resource.value)
    except DecodeError:
        raise _Bad(hint, "does not parse as a TypedExtensionConfig") from None
    name = extension.name or hint
    if not extension.HasField("typed_config"):
        raise _Bad(name, "has no typed_config")
    unwrapped = _wasm_filter(name, extension.typed_config)
    if unwrapped is None:
        return None
    network, wasm = unwrapped
    specifier = wasm.config.vm_config.code.WhichOneof("specifier")
    if specifier == "local":
        return None
    if specifier is None:
        raise _Bad(name, "Wasm filter has neither remote nor local code")
    request = _module_request(name, wasm)
    wasm.config.vm_config.ClearField("code")
    extension.ClearField("typed_config")
    remote = RemoteCode(name, request, _fail_open(wasm.config), network, index)
    return remote, _Rewrite(resource.type_url, extension, wasm)


def _wasm_filter(name: str, typed_config: any_pb2.Any) -> tuple[bool, WasmFilter] | None:
    """(network?, parsed Wasm filter) when ``typed_config`` is a Wasm filter, else ``None``."""
    try:
        unwrapped = unwrap_typed_struct(typed_config, _WASM_TYPES)
    except StructError as exc:
        raise _Bad(name, str(exc)) from None
    if unwrapped is not None:
        network, wasm = unwrapped
        return network, wasm
    kind = _WASM_TYPES.get(type_name(typed_config.type_url))
    if kind is None:
        return None
    network, cls = kind
    wasm = cls()
    try:
        wasm.ParseFromString(typed_config.value)
    except DecodeError:
        raise _Bad(name, f"typed_config does not parse as {cls.DESCRIPTOR.full_name}") from None
    return network, wasm


def _fail_open(config: wasm_pb2.PluginConfig) -> bool:
    """``failure_policy: FAIL_OPEN``, or the deprecated ``fail_open`` when the policy is unset."""
    if config.failure_policy != wasm_pb2.UNSPECIFIED:
        return config.failure_policy == wasm_pb2.FAIL_OPEN
    return config.fail_open


def _take_agent_env(name: str, vm: wasm_pb2.VmConfig) -> tuple[bytes | None, PullPolicy, str]:
    """Read and strip the ``ISTIO_META_*`` keys: (pull secret, pull policy, resource version)."""
    if not vm.HasField("environment_variables"):
        return None, PullPolicy.UNSPECIFIED, ""
    env = vm.environment_variables
    values = env.key_values
    secret: bytes | None = None
    if PULL_SECRET_ENV in values:
        raw = values[PULL_SECRET_ENV]
        if not raw:
            raise _Bad(name, "missing image pull secret (empty)", Result.FETCH_FAILURE)
        secret = raw.encode("utf-8")
    policy = _PULL_POLICIES.get(values.get(PULL_POLICY_ENV, ""), PullPolicy.UNSPECIFIED)
    version = values.get(RESOURCE_VERSION_ENV, "")
    for key in [k for k in values if k.startswith(ISTIO_META_PREFIX)]:
        del values[key]
    if not values and not env.host_env_keys:
        vm.ClearField("environment_variables")
    return secret, policy, version


def _module_request(name: str, wasm: WasmFilter) -> ModuleRequest:
    vm = wasm.config.vm_config
    secret, policy, version = _take_agent_env(name, vm)
    remote = vm.code.remote
    url = remote.http_uri.uri
    if not url:
        raise _Bad(name, "remote code source has no http_uri.uri", Result.MISS_REMOTE_FETCH_HINT)
    try:
        scheme = urlsplit(url).scheme.lower()
    except ValueError:
        raise _Bad(name, f"unparseable Wasm module URL {redact_url(url)!r}") from None
    if scheme not in SUPPORTED_SCHEMES:
        shown = scheme or "(none)"
        raise _Bad(name, f"unsupported Wasm module downloading URL scheme {shown!r}")
    timeout = None
    if remote.http_uri.HasField("timeout"):
        duration = remote.http_uri.timeout
        seconds = duration.seconds + duration.nanos / 1e9
        timeout = seconds if seconds > 0 else None
    return ModuleRequest(
        url=url,
        sha256=normalize_sha256(remote.sha256),
        pull_policy=policy,
        resource_version=version,
        pull_secret=secret,
        timeout=timeout,
        resource_name=name,
    )


def apply_ecds(
    plan: EcdsPlan, outcomes: Mapping[int, Outcome], mode: FailureMode
) -> Converted | Reject:
    """Rewrite the planned resources given each remote's outcome (keyed by remote index).

    A module -> ``code.local.filename``; a failure of a fail-open plugin -> allow-all RBAC; of a
    fail-closed plugin -> deny-all RBAC (``DENY``) or a :class:`Reject` of the whole response
    (``NACK``). Does not modify ``plan``.
    """
    results = list(plan.results())
    replacements: dict[int, any_pb2.Any] = {}
    modules: list[CachedModule] = []
    holds: list[tuple[str, CachedModule]] = []
    failures: list[str] = []
    rejections: list[str] = []
    for number, (remote, rewrite) in enumerate(zip(plan.remotes, plan._rewrites, strict=True)):
        if number not in outcomes:
            raise ValueError(f"no outcome for remote {number} ({remote.resource_name!r})")
        outcome = outcomes[number]
        if isinstance(outcome, BaseException):
            cause = _failure_text(remote, outcome)
            results[remote.index] = Result.FETCH_FAILURE
        else:
            try:
                replacements[remote.index] = _local_resource(rewrite, str(outcome.path))
            except EncodeError as exc:
                cause = f"cannot encode the rewritten config: {exc}"
                results[remote.index] = Result.MARSHAL_FAILURE
            else:
                modules.append(outcome)
                holds.append((remote.resource_name, outcome))
                results[remote.index] = Result.SUCCESS
                continue
        if not remote.fail_open and mode is FailureMode.NACK:
            rejections.append(f"ECDS resource {remote.resource_name!r}: {cause}")
            continue
        replacements[remote.index] = rbac.fallback_resource(
            remote.resource_name, network=remote.network, allow=remote.fail_open
        )
        policy = "allow" if remote.fail_open else "deny"
        failures.append(f"ECDS resource {remote.resource_name!r}: {cause}; {policy}-all RBAC")
    if rejections:
        return Reject("; ".join(rejections), tuple(results))
    return Converted(replacements, tuple(results), tuple(modules), tuple(failures), tuple(holds))


def _failure_text(remote: RemoteCode, error: BaseException) -> str:
    if isinstance(error, FetchError):
        return f"cannot fetch Wasm module: {error}"
    url = redact_url(remote.request.url)
    return f"cannot fetch Wasm module {url}: {type(error).__name__}: {error}"


def _local_resource(rewrite: _Rewrite, filename: str) -> any_pb2.Any:
    wasm = type(rewrite.wasm)()
    wasm.CopyFrom(rewrite.wasm)
    wasm.config.vm_config.code.local.filename = filename
    extension = extension_pb2.TypedExtensionConfig()
    extension.CopyFrom(rewrite.extension)
    network = isinstance(wasm, network_wasm_pb2.Wasm)
    extension.typed_config.type_url = NETWORK_WASM_TYPE if network else HTTP_WASM_TYPE
    extension.typed_config.value = wasm.SerializeToString(deterministic=True)
    return any_pb2.Any(
        type_url=rewrite.type_url, value=extension.SerializeToString(deterministic=True)
    )
