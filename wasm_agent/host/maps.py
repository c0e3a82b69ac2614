"""Header/trailer/metadata maps and their Proxy-Wasm wire format.

Wire format (cpp-host ``marshalPairs``/``toPairs``): u32 count, then (u32 key length, u32 value
length) per pair, then each key and value followed by a NUL. ``HeaderMap`` behaves like Envoy's
``HeaderMapImpl`` where plugins can see it: keys lower-cased, pseudo-headers kept first,
``get`` answers the first value, ``replace`` removes every value then appends one.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping

Pairs = list[tuple[str, str]]

_U32 = struct.Struct("<I")


def serialize_pairs(pairs: Iterable[tuple[bytes, bytes]]) -> bytes:
    """Encode pairs in the Proxy-Wasm map format."""
    items = list(pairs)
    head = [_U32.pack(len(items))]
    body = []
    for key, value in items:
        head.append(struct.pack("<II", len(key), len(value)))
        body.append(key + b"\0" + value + b"\0")
    return b"".join(head) + b"".join(body)


def deserialize_pairs(data: bytes) -> list[tuple[bytes, bytes]]:
    """Decode the map format like cpp-host ``toPairs`` (malformed or short input -> [])."""
    if len(data) < 4:
        return []
    (count,) = _U32.unpack_from(data, 0)
    if 4 + count * 8 > len(data):
        return []
    sizes = [struct.unpack_from("<II", data, 4 + i * 8) for i in range(count)]
    pos = 4 + count * 8
    out = []
    for key_len, value_len in sizes:
        key = data[pos : pos + key_len]
        pos += key_len + 1
        value = data[pos : pos + value_len]
        pos += value_len + 1
        if pos > len(data) + 1:
            return []
        out.append((key, value))
    return out


def _lower(key: bytes) -> bytes:
    return key.lower()


class HeaderMap:
    """An ordered multi-map of byte strings with Envoy's mutation semantics."""

    __slots__ = ("entries",)

    def __init__(self, items: Iterable[tuple[str | bytes, str | bytes]] | Mapping = ()) -> None:
        self.entries: list[tuple[bytes, bytes]] = []
        source = items.items() if isinstance(items, Mapping) else items
        for key, value in source:
            self.add(_b(key), _b(value))

    @classmethod
    def coerce(cls, value: HeaderMap | Iterable | Mapping | None) -> HeaderMap:
        return value if isinstance(value, HeaderMap) else cls(value or ())

    def get(self, key: bytes) -> bytes | None:
        key = _lower(key)
        for k, v in self.entries:
            if k == key:
                return v
        return None

    def get_all(self, key: str | bytes) -> list[bytes]:
        key = _lower(_b(key))
        return [v for k, v in self.entries if k == key]

    def add(self, key: bytes, value: bytes) -> None:
        key = _lower(key)
        if key.startswith(b":"):
            index = 0
            while index < len(self.entries) and self.entries[index][0].startswith(b":"):
                index += 1
            self.entries.insert(index, (key, value))
        else:
            self.entries.append((key, value))

    def remove(self, key: bytes) -> None:
        key = _lower(key)
        self.entries = [(k, v) for k, v in self.entries if k != key]

    def replace(self, key: bytes, value: bytes) -> None:
        self.remove(key)
        self.add(key, value)

    def set_pairs(self, pairs: Iterable[tuple[bytes, bytes]]) -> None:
        self.entries = []
        for key, value in pairs:
            self.add(key, value)

    def byte_size(self) -> int:
        """Envoy ``HeaderMap::byteSize``: the sum of key and value lengths."""
        return sum(len(k) + len(v) for k, v in self.entries)

    def serialize(self) -> bytes:
        return serialize_pairs(self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def pairs(self) -> Pairs:
        """Entries as ``(str, str)`` (latin-1 keeps every byte)."""
        return [(k.decode("latin-1"), v.decode("latin-1")) for k, v in self.entries]

    def to_dict(self) -> dict[str, str]:
        """First value per key, as ``str``."""
        out: dict[str, str] = {}
        for k, v in self.pairs():
            out.setdefault(k, v)
        return out

    def copy(self) -> HeaderMap:
        clone = HeaderMap()
        clone.entries = list(self.entries)
        return clone

    def __repr__(self) -> str:
        return f"HeaderMap({self.pairs()!r})"


def _b(value: str | bytes) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode("latin-1")


# -- host functions ---------------------------------------------------------------------------

from wasm_agent.host.abi import AbiVersion, MapType, Status  # noqa: E402
from wasm_agent.host.hostfn import Current, VmLike, host  # noqa: E402

_MAX_MAP = max(MapType)


def lookup_map(vm: VmLike, map_type: int, mutable: bool = True) -> HeaderMap | None:
    """The map ``map_type`` as the current context sees it (None: not available now).

    In ``proxy_on_log`` the stream maps can be read but not changed or sized (Envoy serves
    them from the access log, read-only).
    """
    ctx = vm.context()
    if map_type <= MapType.HTTP_RESPONSE_TRAILERS:
        if mutable and ctx.log_phase:
            return None
        return ctx.maps.get(map_type)
    root = vm.contexts.get(ctx.root_id, vm.root) if ctx.root_id else ctx
    if map_type == MapType.GRPC_RECEIVE_INITIAL_METADATA:
        return root.grpc_initial
    if map_type == MapType.GRPC_RECEIVE_TRAILING_METADATA:
        return root.grpc_trailing
    response = root.http_call_response
    if response is None:
        return None
    return response[0] if map_type == MapType.HTTP_CALL_RESPONSE_HEADERS else response[2]


@host("proxy_get_header_map_value", "iiiii")
def get_header_map_value(mtype: int, key_ptr: int, key_size: int, val_pp: int, size_p: int) -> int:
    if mtype & 0xFFFFFFFF > _MAX_MAP:
        return Status.BAD_ARGUMENT
    vm = Current.vm
    key = vm.memory.read(key_ptr, key_size)
    if key is None:
        return Status.INVALID_MEMORY_ACCESS
    hmap = lookup_map(vm, mtype, mutable=False)
    if hmap is None:
        return Status.BAD_ARGUMENT
    value = hmap.get(key)
    if value is None:
        if vm.abi_version is not AbiVersion.V0_1_0:
            return Status.NOT_FOUND
        value = b""
    return Status.OK if vm.memory.copy_out(value, val_pp, size_p) else Status.INVALID_MEMORY_ACCESS


def _mutate(mtype: int, key_ptr: int, key_size: int, val_ptr: int, val_size: int, op: str) -> int:
    if mtype & 0xFFFFFFFF > _MAX_MAP:
        return Status.BAD_ARGUMENT
    vm = Current.vm
    key = vm.memory.read(key_ptr, key_size)
    value = vm.memory.read(val_ptr, val_size) if op != "remove" else b""
    if key is None or value is None:
        return Status.INVALID_MEMORY_ACCESS
    hmap = lookup_map(vm, mtype)
    if hmap is None:
        return Status.BAD_ARGUMENT
    if op == "add":
        hmap.add(key, value)
    elif op == "replace":
        hmap.replace(key, value)
    else:
        hmap.remove(key)
    return Status.OK


@host("proxy_add_header_map_value", "iiiii")
def add_header_map_value(mtype: int, kp: int, ks: int, vp: int, vs: int) -> int:
    return _mutate(mtype, kp, ks, vp, vs, "add")


@host("proxy_replace_header_map_value", "iiiii")
def replace_header_map_value(mtype: int, kp: int, ks: int, vp: int, vs: int) -> int:
    return _mutate(mtype, kp, ks, vp, vs, "replace")


@host("proxy_remove_header_map_value", "iii")
def remove_header_map_value(mtype: int, kp: int, ks: int) -> int:
    return _mutate(mtype, kp, ks, 0, 0, "remove")


@host("proxy_get_header_map_pairs", "iii")
def get_header_map_pairs(mtype: int, ptr_p: int, size_p: int) -> int:
    if mtype & 0xFFFFFFFF > _MAX_MAP:
        return Status.BAD_ARGUMENT
    vm = Current.vm
    hmap = lookup_map(vm, mtype, mutable=False)
    data = hmap.serialize() if hmap else b""
    return Status.OK if vm.memory.copy_out(data, ptr_p, size_p) else Status.INVALID_MEMORY_ACCESS


@host("proxy_set_header_map_pairs", "iii")
def set_header_map_pairs(mtype: int, ptr: int, size: int) -> int:
    if mtype & 0xFFFFFFFF > _MAX_MAP:
        return Status.BAD_ARGUMENT
    vm = Current.vm
    data = vm.memory.read(ptr, size)
    if data is None:
        return Status.INVALID_MEMORY_ACCESS
    hmap = lookup_map(vm, mtype)
    if hmap is None:
        return Status.BAD_ARGUMENT
    hmap.set_pairs(deserialize_pairs(data))
    return Status.OK


@host("proxy_get_header_map_size", "ii")
def get_header_map_size(mtype: int, result_p: int) -> int:
    if mtype & 0xFFFFFFFF > _MAX_MAP:
        return Status.BAD_ARGUMENT
    vm = Current.vm
    hmap = lookup_map(vm, mtype)
    if hmap is None:
        return Status.BAD_ARGUMENT
    ok = vm.memory.set_u32(result_p, hmap.byte_size())
    return Status.OK if ok else Status.INVALID_MEMORY_ACCESS
