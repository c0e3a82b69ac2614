"""Proxy-Wasm ABI constants, version detection and the host-function registry.

Numbers follow proxy-wasm/spec (abi-versions v0.1.0, v0.2.0, v0.2.1) and the host function
tables of proxy-wasm-cpp-host (``FOR_ALL_HOST_FUNCTIONS`` plus the per-version extras that
``WasmBase::registerCallbacks`` links), which is what Envoy serves.
"""

from __future__ import annotations

import enum

import wasmtime

from wasm_agent.host.hostfn import (  # noqa: F401 - re-exported for older callers
    HOST_FUNCTIONS,
    WASI_MODULES,
    HostFn,
)


class AbiVersion(enum.Enum):
    V0_1_0 = "0.1.0"
    V0_2_0 = "0.2.0"
    V0_2_1 = "0.2.1"


ABI_MARKERS = {
    "proxy_abi_version_0_1_0": AbiVersion.V0_1_0,
    "proxy_abi_version_0_2_0": AbiVersion.V0_2_0,
    "proxy_abi_version_0_2_1": AbiVersion.V0_2_1,
}


class Status(enum.IntEnum):
    OK = 0
    NOT_FOUND = 1
    BAD_ARGUMENT = 2
    SERIALIZATION_FAILURE = 3
    PARSE_FAILURE = 4
    BAD_EXPRESSION = 5
    INVALID_MEMORY_ACCESS = 6
    EMPTY = 7
    CAS_MISMATCH = 8
    RESULT_MISMATCH = 9
    INTERNAL_FAILURE = 10
    BROKEN_CONNECTION = 11
    UNIMPLEMENTED = 12


class LogLevel(enum.IntEnum):
    TRACE = 0
    DEBUG = 1
    INFO = 2
    WARN = 3
    ERROR = 4
    CRITICAL = 5


class BufferType(enum.IntEnum):
    HTTP_REQUEST_BODY = 0
    HTTP_RESPONSE_BODY = 1
    DOWNSTREAM_DATA = 2
    UPSTREAM_DATA = 3
    HTTP_CALL_RESPONSE_BODY = 4
    GRPC_RECEIVE_BUFFER = 5
    VM_CONFIGURATION = 6
    PLUGIN_CONFIGURATION = 7
    CALL_DATA = 8  # foreign function arguments


class MapType(enum.IntEnum):
    HTTP_REQUEST_HEADERS = 0
    HTTP_REQUEST_TRAILERS = 1
    HTTP_RESPONSE_HEADERS = 2
    HTTP_RESPONSE_TRAILERS = 3
    GRPC_RECEIVE_INITIAL_METADATA = 4
    GRPC_RECEIVE_TRAILING_METADATA = 5
    HTTP_CALL_RESPONSE_HEADERS = 6
    HTTP_CALL_RESPONSE_TRAILERS = 7


class StreamType(enum.IntEnum):
    REQUEST = 0
    RESPONSE = 1
    DOWNSTREAM = 2
    UPSTREAM = 3


class MetricType(enum.IntEnum):
    COUNTER = 0
    GAUGE = 1
    HISTOGRAM = 2


class PeerType(enum.IntEnum):
    UNKNOWN = 0
    LOCAL = 1
    REMOTE = 2


class HeadersStatus(enum.IntEnum):
    """Envoy's FilterHeadersStatus (what a headers callback result becomes)."""

    CONTINUE = 0
    STOP_ITERATION = 1
    CONTINUE_AND_END_STREAM = 2
    STOP_ALL_ITERATION_AND_BUFFER = 3
    STOP_ALL_ITERATION_AND_WATERMARK = 4


class DataStatus(enum.IntEnum):
    """Envoy's FilterDataStatus."""

    CONTINUE = 0
    STOP_ITERATION_AND_BUFFER = 1
    STOP_ITERATION_AND_WATERMARK = 2
    STOP_ITERATION_NO_BUFFER = 3


class TrailersStatus(enum.IntEnum):
    CONTINUE = 0
    STOP_ITERATION = 1


class NetworkStatus(enum.IntEnum):
    CONTINUE = 0
    STOP_ITERATION = 1


def headers_status(result: int, stop_next: bool) -> HeadersStatus:
    """Map a headers callback's return like cpp-host, then Envoy's convertFilterHeadersStatus:
    StopIteration and bogus codes -> StopAll...Watermark; ContinueAndEndStream (2) has no Envoy
    counterpart and becomes Continue."""
    result &= 0xFFFFFFFF
    if stop_next or result > HeadersStatus.STOP_ALL_ITERATION_AND_WATERMARK:
        return HeadersStatus.STOP_ALL_ITERATION_AND_WATERMARK
    if result == HeadersStatus.STOP_ITERATION:
        return HeadersStatus.STOP_ALL_ITERATION_AND_WATERMARK
    if result == HeadersStatus.CONTINUE_AND_END_STREAM:
        return HeadersStatus.CONTINUE
    return HeadersStatus(result)


def data_status(result: int, stop_next: bool) -> DataStatus:
    """Map a body callback's return; codes above StopIterationNoBuffer become it."""
    result &= 0xFFFFFFFF
    if stop_next or result > DataStatus.STOP_ITERATION_NO_BUFFER:
        return DataStatus.STOP_ITERATION_NO_BUFFER
    return DataStatus(result)


def trailers_status(result: int, stop_next: bool) -> TrailersStatus:
    result &= 0xFFFFFFFF
    if stop_next or result > TrailersStatus.STOP_ITERATION:
        return TrailersStatus.STOP_ITERATION
    return TrailersStatus(result)


def network_status(result: int) -> NetworkStatus:
    return NetworkStatus.CONTINUE if result == 0 else NetworkStatus.STOP_ITERATION


# -- host function tables ---------------------------------------------------------------------

_I32 = wasmtime.ValType.i32()
_I64 = wasmtime.ValType.i64()
_TYPES = {"i": _I32, "I": _I64}

# Proxy-Wasm functions every ABI version links (cpp-host FOR_ALL_HOST_FUNCTIONS + helpers).
COMMON_PROXY = frozenset(
    "proxy_" + n
    for n in [
        "log",
        "get_status",
        "set_property",
        "get_property",
        "send_local_response",
        "get_shared_data",
        "set_shared_data",
        "register_shared_queue",
        "resolve_shared_queue",
        "dequeue_shared_queue",
        "enqueue_shared_queue",
        "get_header_map_value",
        "add_header_map_value",
        "replace_header_map_value",
        "remove_header_map_value",
        "get_header_map_pairs",
        "set_header_map_pairs",
        "get_header_map_size",
        "get_buffer_status",
        "get_buffer_bytes",
        "set_buffer_bytes",
        "http_call",
        "grpc_call",
        "grpc_stream",
        "grpc_close",
        "grpc_cancel",
        "grpc_send",
        "set_tick_period_milliseconds",
        "get_current_time_nanoseconds",
        "define_metric",
        "increment_metric",
        "record_metric",
        "get_metric",
        "set_effective_context",
        "done",
        "call_foreign_function",
    ]
) | {"pthread_equal", "emscripten_notify_memory_growth"}

VERSION_PROXY = {
    AbiVersion.V0_1_0: frozenset(
        {
            "proxy_get_configuration",
            "proxy_continue_request",
            "proxy_continue_response",
            "proxy_clear_route_cache",
        }
    ),
    AbiVersion.V0_2_0: frozenset({"proxy_continue_stream", "proxy_close_stream"}),
    AbiVersion.V0_2_1: frozenset(
        {"proxy_continue_stream", "proxy_close_stream", "proxy_get_log_level"}
    ),
}

WASI_FUNCTIONS = frozenset(
    [
        "fd_write",
        "fd_read",
        "fd_seek",
        "fd_close",
        "fd_fdstat_get",
        "environ_get",
        "environ_sizes_get",
        "args_get",
        "args_sizes_get",
        "clock_time_get",
        "random_get",
        "proc_exit",
        "path_open",
        "fd_prestat_get",
        "fd_prestat_dir_name",
    ]
)

# Functions the module may call while it starts (_initialize/main/_start); others trap.
START_ALLOWED = frozenset(
    {"proxy_log"}
    | set(
        [
            "fd_write",
            "args_sizes_get",
            "args_get",
            "environ_sizes_get",
            "environ_get",
            "fd_prestat_get",
            "fd_prestat_dir_name",
            "clock_time_get",
            "random_get",
        ]
    )
)


def host_function_table() -> dict[tuple[str, str], tuple[str, str, HostFn]]:
    """Every host function (``registry.host_function_table``; kept here for older callers)."""
    from wasm_agent.host import registry  # noqa: PLC0415 - registry imports this module

    return registry.host_function_table()


def func_type(params: str, results: str) -> wasmtime.FuncType:
    return wasmtime.FuncType([_TYPES[c] for c in params], [_TYPES[c] for c in results])


def linked_names(version: AbiVersion) -> frozenset[str]:
    """``env`` function names a module declaring ``version`` may import."""
    return COMMON_PROXY | VERSION_PROXY[version]


def detect_version(export_names: set[str]) -> AbiVersion | None:
    """The ABI version a module declares via its marker export (the newest if several)."""
    found = [v for marker, v in ABI_MARKERS.items() if marker in export_names]
    return found[-1] if found else None


def type_str(types: list[wasmtime.ValType]) -> str:
    """Render value types in parentheses, ``(i32 i32)`` (``wasm-agent check``'s notation)."""
    return "(" + " ".join(str(t) for t in types) + ")"


def envoy_types(types: list[wasmtime.ValType]) -> str:
    """Value types as cpp-host's V8 ``printValTypes`` prints them: ``i32 i32``, none: ``void``."""
    return " ".join(str(t) for t in types) or "void"


def envoy_signature(ft: wasmtime.FuncType) -> str:
    """A function type the way Envoy's load errors print it: ``i32 i32 -> i32``."""
    return f"{envoy_types(ft.params)} -> {envoy_types(ft.results)}"


# Callbacks the host looks up, with the signature cpp-host requires ((params, results)).
CALLBACKS_COMMON: dict[str, tuple[str, str]] = {
    "proxy_on_context_create": ("ii", ""),
    "proxy_on_vm_start": ("ii", "i"),
    "proxy_validate_configuration": ("ii", "i"),
    "proxy_on_configure": ("ii", "i"),
    "proxy_on_tick": ("i", ""),
    "proxy_on_new_connection": ("i", "i"),
    "proxy_on_downstream_data": ("iii", "i"),
    "proxy_on_upstream_data": ("iii", "i"),
    "proxy_on_downstream_connection_close": ("ii", ""),
    "proxy_on_upstream_connection_close": ("ii", ""),
    "proxy_on_request_body": ("iii", "i"),
    "proxy_on_request_trailers": ("ii", "i"),
    "proxy_on_request_metadata": ("ii", "i"),
    "proxy_on_response_body": ("iii", "i"),
    "proxy_on_response_trailers": ("ii", "i"),
    "proxy_on_response_metadata": ("ii", "i"),
    "proxy_on_http_call_response": ("iiiii", ""),
    "proxy_on_grpc_receive_initial_metadata": ("iii", ""),
    "proxy_on_grpc_receive_trailing_metadata": ("iii", ""),
    "proxy_on_grpc_receive": ("iii", ""),
    "proxy_on_grpc_close": ("iii", ""),
    "proxy_on_queue_ready": ("ii", ""),
    "proxy_on_done": ("i", "i"),
    "proxy_on_log": ("i", ""),
    "proxy_on_delete": ("i", ""),
}


def callbacks_for(version: AbiVersion) -> dict[str, tuple[str, str]]:
    """Callback signatures for ``version`` (headers callbacks gained end_of_stream in 0.2)."""
    table = dict(CALLBACKS_COMMON)
    hdr = ("ii", "i") if version is AbiVersion.V0_1_0 else ("iii", "i")
    table["proxy_on_request_headers"] = hdr
    table["proxy_on_response_headers"] = hdr
    if version is not AbiVersion.V0_1_0:
        table["proxy_on_foreign_function"] = ("iii", "")  # cpp-host: WasmCallVoid<3>
    return table
