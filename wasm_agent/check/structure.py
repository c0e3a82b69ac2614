"""A small reader of the Wasm binary format: the sections ``check`` reports on.

It reads the type, import, function, table, memory, export and start sections (and skips every
other section by its size, so a 2 MB code section costs nothing). Signatures are rendered like
cpp-host's messages, ``(i32 i32) -> (i32)``. Anything it cannot parse raises
:class:`MalformedModule` with the byte offset; wasmtime's compile is the final word on validity.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from wasm_agent.core.errors import WasmAgentError

MAGIC = b"\0asm"
VERSION = b"\x01\0\0\0"

_VALTYPES = {
    0x7F: "i32",
    0x7E: "i64",
    0x7D: "f32",
    0x7C: "f64",
    0x7B: "v128",
    0x70: "funcref",
    0x6F: "externref",
}
_KINDS = {0: "func", 1: "table", 2: "memory", 3: "global", 4: "tag"}
PAGE = 65536


class MalformedModule(WasmAgentError, ValueError):
    """The bytes are not a Wasm module this reader understands."""


@dataclass(frozen=True)
class Limits:
    """Memory or table limits: ``minimum``/``maximum`` in pages (memory) or elements (table)."""

    minimum: int
    maximum: int | None
    shared: bool = False
    memory64: bool = False

    def to_dict(self) -> dict[str, object]:
        return {"min": self.minimum, "max": self.maximum, "shared": self.shared}


@dataclass(frozen=True)
class Import:
    """One import: ``kind`` is func/table/memory/global/tag; ``signature`` for functions."""

    module: str
    name: str
    kind: str
    signature: str | None = None
    limits: Limits | None = None

    @property
    def where(self) -> str:
        return f"{self.module}.{self.name}"


@dataclass(frozen=True)
class Export:
    name: str
    kind: str
    signature: str | None = None


@dataclass
class ModuleInfo:
    """What the sections say about one module."""

    imports: list[Import] = field(default_factory=list)
    exports: list[Export] = field(default_factory=list)
    memories: list[Limits] = field(default_factory=list)  # imported ones first
    tables: list[Limits] = field(default_factory=list)
    start: int | None = None  # function index of the start section
    function_count: int = 0  # imported + defined
    custom_sections: list[str] = field(default_factory=list)

    def export_map(self) -> dict[str, Export]:
        return {e.name: e for e in self.exports}


class _Reader:
    def __init__(self, data: bytes | memoryview, pos: int = 0, end: int | None = None) -> None:
        self.data = data
        self.pos = pos
        self.end = len(data) if end is None else end

    def byte(self) -> int:
        if self.pos >= self.end:
            raise MalformedModule(f"unexpected end of section at byte {self.pos}")
        value = self.data[self.pos]
        self.pos += 1
        return value

    def uleb(self, bits: int = 32) -> int:
        result = shift = 0
        start = self.pos
        while True:
            b = self.byte()
            result |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                break
            if shift >= bits + 7:
                raise MalformedModule(f"integer too long at byte {start}")
        if result >> bits:
            raise MalformedModule(f"integer too large at byte {start}")
        return result

    def raw(self, size: int) -> bytes:
        if self.pos + size > self.end:
            raise MalformedModule(f"unexpected end of section at byte {self.pos}")
        chunk = bytes(self.data[self.pos : self.pos + size])
        self.pos += size
        return chunk

    def name(self) -> str:
        start = self.pos
        try:
            return self.raw(self.uleb()).decode("utf-8")
        except UnicodeDecodeError:
            raise MalformedModule(f"name is not UTF-8 at byte {start}") from None

    def valtype(self) -> str:
        code = self.byte()
        if code not in _VALTYPES:
            raise MalformedModule(f"unsupported value type 0x{code:02x} at byte {self.pos - 1}")
        return _VALTYPES[code]

    def limits(self) -> Limits:
        flags = self.byte()
        if flags > 7:
            raise MalformedModule(f"bad limits flags 0x{flags:02x} at byte {self.pos - 1}")
        bits = 64 if flags & 4 else 32
        minimum = self.uleb(bits)
        maximum = self.uleb(bits) if flags & 1 else None
        return Limits(minimum, maximum, bool(flags & 2), bool(flags & 4))


def signature(params: list[str], results: list[str]) -> str:
    """``(i32 i32) -> (i32)``, the way cpp-host prints function types."""
    return f"({' '.join(params)}) -> ({' '.join(results)})"


def parse_module(data: bytes) -> ModuleInfo:
    """Read the sections of ``data``; raise :class:`MalformedModule` on bad bytes."""
    if len(data) < 8 or data[:4] != MAGIC:
        raise MalformedModule("not a Wasm module (no \\0asm magic number)")
    if data[4:8] != VERSION:
        raise MalformedModule(f"unsupported Wasm binary version {data[4:8].hex()}")
    view = memoryview(data)
    info = ModuleInfo()
    types: list[str | None] = []
    func_types: list[int] = []  # type index per function (imported then defined)
    top = _Reader(view, 8)
    while top.pos < top.end:
        section_id = top.byte()
        size = top.uleb()
        body_start = top.pos
        if body_start + size > top.end:
            raise MalformedModule(f"section {section_id} at byte {body_start} runs past the end")
        r = _Reader(view, body_start, body_start + size)
        if section_id == 0:
            info.custom_sections.append(r.name())
        elif section_id == 1:
            types = _types(r)
        elif section_id == 2:
            _imports(r, info, types, func_types)
        elif section_id == 3:
            func_types.extend(r.uleb() for _ in range(r.uleb()))
        elif section_id == 4:
            for _ in range(r.uleb()):
                _table_type(r, info)
        elif section_id == 5:
            info.memories.extend(r.limits() for _ in range(r.uleb()))
        elif section_id == 7:
            _exports(r, info, types, func_types)
        elif section_id == 8:
            info.start = r.uleb()
        top.pos = body_start + size
    info.function_count = len(func_types)
    return info


def _types(r: _Reader) -> list[str | None]:
    types: list[str | None] = []
    for _ in range(r.uleb()):
        form = r.byte()
        if form != 0x60:  # GC proposal types (rec/sub/struct/array): not a plugin's business
            raise MalformedModule(f"unsupported type form 0x{form:02x} at byte {r.pos - 1}")
        params = [r.valtype() for _ in range(r.uleb())]
        results = [r.valtype() for _ in range(r.uleb())]
        types.append(signature(params, results))
    return types


def _type_at(types: list[str | None], index: int, pos: int) -> str | None:
    if index >= len(types):
        raise MalformedModule(f"type index {index} out of range at byte {pos}")
    return types[index]


def _table_type(r: _Reader, info: ModuleInfo) -> Limits:
    if r.data[r.pos] == 0x40:  # table with an initializer expression: not expected here
        raise MalformedModule(f"unsupported table form at byte {r.pos}")
    r.valtype()
    limits = r.limits()
    info.tables.append(limits)
    return limits


def _imports(r: _Reader, info: ModuleInfo, types: list[str | None], funcs: list[int]) -> None:
    for _ in range(r.uleb()):
        module, name = r.name(), r.name()
        kind_code = r.byte()
        kind = _KINDS.get(kind_code)
        if kind is None:
            raise MalformedModule(f"bad import kind 0x{kind_code:02x} at byte {r.pos - 1}")
        sig: str | None = None
        limits: Limits | None = None
        if kind == "func":
            index = r.uleb()
            sig = _type_at(types, index, r.pos)
            funcs.append(index)
        elif kind == "table":
            limits = _table_type(r, info)
        elif kind == "memory":
            limits = r.limits()
            info.memories.append(limits)
        elif kind == "global":
            r.valtype()
            r.byte()
        else:  # tag: attribute + type index
            r.byte()
            r.uleb()
        info.imports.append(Import(module, name, kind, sig, limits))


def _exports(r: _Reader, info: ModuleInfo, types: list[str | None], funcs: list[int]) -> None:
    for _ in range(r.uleb()):
        name = r.name()
        kind_code = r.byte()
        index = r.uleb()
        kind = _KINDS.get(kind_code)
        if kind is None:
            raise MalformedModule(f"bad export kind 0x{kind_code:02x} at byte {r.pos - 1}")
        sig = None
        if kind == "func" and index < len(funcs):
            sig = _type_at(types, funcs[index], r.pos)
        info.exports.append(Export(name, kind, sig))
