"""Properties (``proxy_get_property``/``proxy_set_property``) with Envoy's names and encodings.

Paths are NUL-separated (``request\\0path``). Strings are returned as bytes; ``request.time``
(a timestamp) is 8-byte little-endian nanoseconds since the epoch; ``request.size``,
``source.port``, ``destination.port``, ``connection.id`` and ``response.code`` are 8-byte
little-endian integers. ``request\\0headers\\0<name>`` answers one header. The test sets or
overrides any path with ``properties={"request.path": "/x", ...}`` (dots or NULs). Values the
plugin sets live in the stream's filter state and are readable back under names that are not
Envoy's own (``request``, ``response``, ...); on the root context ``set_property`` is NOT_FOUND.
"""

from __future__ import annotations

import struct
from typing import Any

from wasm_agent.host.abi import Status
from wasm_agent.host.hostfn import Current, VmLike, host
from wasm_agent.host.streaminfo import ENVOY_NODE, Unserializable

KNOWN_TOKENS = frozenset(
    b"metadata request response connection upstream node source destination listener_direction "
    b"listener_metadata cluster_name cluster_metadata route_name route_metadata plugin_name "
    b"upstream_host_metadata plugin_root_id plugin_vm_id connection_id filter_state xds".split()
)


def encode_value(value: Any) -> bytes:
    """Encode a test-provided property value: bytes/str as-is, bool 1 byte, int 8-byte LE."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, bool):
        return b"\x01" if value else b"\x00"
    if isinstance(value, int):
        return struct.pack("<q", value)
    raise TypeError(f"unsupported property value {value!r}")


def normalize_path(path: str | bytes) -> bytes:
    raw = path.encode() if isinstance(path, str) else path
    return raw if b"\0" in raw else raw.replace(b".", b"\0")


def resolve(vm: VmLike, path: bytes) -> bytes | None:
    """The property ``path`` as the current context sees it (None: NOT_FOUND)."""
    ctx = vm.context()
    stream = ctx.stream
    if stream is not None and path in stream.overrides:
        return stream.overrides[path]
    overrides = vm.property_overrides
    if path in overrides:
        return overrides[path]
    head = path.split(b"\0", 1)[0]
    if head not in KNOWN_TOKENS:
        # Envoy looks up the first segment in filter state; deeper paths are field accesses
        # into a bytes value, which fail (NOT_FOUND).
        return ctx.filter_state.get(path) if b"\0" not in path else None
    if head == b"plugin_name":
        return vm.options.plugin_name.encode()
    if head == b"plugin_root_id":
        return vm.options.root_id.encode()
    if head == b"plugin_vm_id":
        return vm.options.vm_id.encode()
    if path == b"xds\0node":  # in every context (the root's too)
        return ENVOY_NODE
    if stream is None:
        return None
    return stream.get_property(path)


@host("proxy_get_property", "iiii")
def get_property(path_ptr: int, path_size: int, value_pp: int, size_p: int) -> int:
    vm = Current.vm
    path = vm.memory.read(path_ptr, path_size)
    if path is None:
        return Status.INVALID_MEMORY_ACCESS
    try:
        value = resolve(vm, path)
    except Unserializable:
        return Status.SERIALIZATION_FAILURE
    if value is None:
        return Status.NOT_FOUND
    return (
        Status.OK if vm.memory.copy_out(value, value_pp, size_p) else Status.INVALID_MEMORY_ACCESS
    )


@host("proxy_set_property", "iiii")
def set_property(path_ptr: int, path_size: int, value_ptr: int, value_size: int) -> int:
    vm = Current.vm
    path = vm.memory.read(path_ptr, path_size)
    value = vm.memory.read(value_ptr, value_size)
    if path is None or value is None:
        return Status.INVALID_MEMORY_ACCESS
    ctx = vm.context()
    if ctx.stream is None:
        return Status.NOT_FOUND
    ctx.filter_state[path] = value
    return Status.OK
