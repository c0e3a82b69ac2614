"""Envoy's ``[wasm]`` log lines, as Envoy 1.40 writes them (recorded in tests/conformance/golden).

- Plugin logs: ``wasm log<prefix>: <message>``; the prefix is `` <plugin name> <root id> <vm id>``
  on stream contexts and `` <root id> <vm id>`` on the root context (empty parts left out).
- A trap: ``Function: <callback> failed: <V8 message>`` at **error** under every failure policy,
  followed by ``Proxy-Wasm plugin in-VM backtrace:`` and one ``  <i>:  0x<offset> - <name>`` line
  per wasm frame (``unknown(function index:<n>)`` for functions without a name); no backtrace
  when the module names no function (no ``name`` section).
- At trace level, every call across the boundary: ``[host->vm] proxy_on_vm_start(1, 0)``, then
  ``[host<-vm] proxy_on_vm_start return: 1`` (``void`` for no result); host functions as
  ``[vm->host] env.proxy_log(2, 2048, 10)`` / ``[vm<-host] env.proxy_log return: 0``; arguments
  printed as unsigned integers.
- At debug level, VM lifecycle: ``Base Wasm created <n> now active``,
  ``Thread-Local Wasm created <n> now active``, ``~Wasm <n> remaining active`` (``n``: Wasm
  objects alive in the process).

Host notes (what the reference host adds, e.g. "runaway plugin stopped") are never Envoy lines.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import wasmtime

LEVELS = ("trace", "debug", "info", "warning", "error", "critical")
MAIN = "main"


@dataclass(frozen=True)
class EnvoyLine:
    """One ``[wasm]`` line: the thread that wrote it ("main", "worker-0", ...), level, text."""

    thread: str
    level: str
    text: str


def log_prefix(*parts: str) -> str:
    """Envoy's ``makeLogPrefix``: each non-empty part preceded by a space."""
    return "".join(" " + part for part in parts if part)


def plugin_log(prefix: str, message: str) -> str:
    return f"wasm log{prefix}: {message}"


def call_args(args: Sequence[int], params: str = "") -> str:
    """Arguments as Envoy traces them: unsigned, comma-separated; ``params`` (``i`` i32, ``I``
    i64 per argument) gives the width, else the value's range decides (Envoy 1.40 printed an
    i64 -1 as 18446744073709551615)."""
    out = []
    for index, a in enumerate(args):
        kind = params[index] if index < len(params) else ""
        wide = kind == "I" or (not kind and not -(1 << 31) <= a < (1 << 32))
        out.append(str(a & (2**64 - 1) if wide else a & 0xFFFFFFFF))
    return ", ".join(out)


def host_to_vm(name: str, args: Sequence[int]) -> str:
    return f"[host->vm] {name}({call_args(args)})"


def host_from_vm(name: str, result: int | None) -> str:
    value = "void" if result is None else str(result & 0xFFFFFFFF)
    return f"[host<-vm] {name} return: {value}"


def vm_to_host(module: str, name: str, args: Sequence[int], params: str = "") -> str:
    return f"[vm->host] {module}.{name}({call_args(args, params)})"


def vm_from_host(module: str, name: str, result: int | None) -> str:
    value = "void" if result is None else str(result & 0xFFFFFFFF)
    return f"[vm<-host] {module}.{name} return: {value}"


# Opcodes that wrap a trapping instruction and that V8 skips when it reports the offset:
# ``if``/``block``/``loop`` followed by a one-byte block type.
_BLOCKS = (0x02, 0x03, 0x04)
_UNREACHABLE = 0x00


def _v8_offset(wasm: bytes, offset: int, unreachable: bool) -> int:
    """V8 reports the trapping instruction; wasmtime may report an enclosing ``if`` before an
    ``unreachable``. Step over such block openers when the trap is ``unreachable``."""
    if not unreachable:
        return offset
    at = offset
    for _ in range(4):
        if at + 1 < len(wasm) and wasm[at] in _BLOCKS and wasm[at + 1] in (0x40, 0x7F, 0x7E):
            at += 2
            continue
        break
    return at if at < len(wasm) and wasm[at] == _UNREACHABLE else offset


def _leb(data: bytes, at: int) -> tuple[int, int]:
    """An unsigned LEB128 at ``at``: (value, the offset after it)."""
    value = shift = 0
    while at < len(data):
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            break
    return value, at


@functools.lru_cache(maxsize=64)
def has_function_names(wasm: bytes) -> bool:
    """The module's ``name`` section names at least one function. cpp-host prints the in-VM
    backtrace only then (Envoy 1.40: an AssemblyScript -O3 module, which has none, trapped
    with the bare ``Function: ... failed`` line)."""
    at = 8
    while at < len(wasm):
        section = wasm[at]
        size, at = _leb(wasm, at + 1)
        end = at + size
        if section == 0:
            length, name_at = _leb(wasm, at)
            if wasm[name_at : name_at + length] == b"name":
                sub = name_at + length
                while sub < end:
                    kind, sub = wasm[sub], sub + 1
                    sub_size, sub = _leb(wasm, sub)
                    if kind == 1:
                        return _leb(wasm, sub)[0] > 0
                    sub += sub_size
        at = end
    return False


def backtrace(exc: BaseException, wasm: bytes) -> str:
    """``\\nProxy-Wasm plugin in-VM backtrace:`` and the frames, as cpp-host's V8 prints them
    (empty when the failure carries no wasm frames)."""
    if not isinstance(exc, wasmtime.Trap):
        return ""
    try:
        frames = exc.frames
    except Exception:  # a trap without frame info
        return ""
    if not frames or not has_function_names(wasm):
        return ""
    unreachable = exc.trap_code is not None and exc.trap_code.name == "UNREACHABLE"
    lines = ["Proxy-Wasm plugin in-VM backtrace:"]
    for index, frame in enumerate(frames):
        offset = frame.module_offset
        if index == 0:
            offset = _v8_offset(wasm, offset, unreachable)
        name = frame.func_name or f"unknown(function index:{frame.func_index})"
        lines.append(f"{index:>3}:  {hex(offset)} - {name}")
    return "\n" + "\n".join(lines)


_LINK_ERRORS = (
    "Failed to load Wasm module due to",
    "Bad function signature",
    "Wasm module is missing malloc function.",
    "Failed to create new Wasm instance",
)
_CODE_ERRORS = (
    "Missing or unknown Proxy-Wasm ABI version",
    "Failed to parse",
    "Failed to load Wasm bytecode",
)


def _stage(message: str) -> str:
    """Envoy's ``Wasm VM failed <stage>`` for a load failure's root cause."""
    if message.startswith(_CODE_ERRORS):
        return "Failed to load Wasm code"
    if message in ("Failed to start base Wasm", "Failed to configure base Wasm plugin"):
        return message
    if message.startswith("Function: proxy_on_configure "):
        return "Failed to configure base Wasm plugin"
    if message.startswith(("Function: proxy_on_vm_start ", "Function: proxy_on_context_create ")):
        return "Failed to start base Wasm"
    return "Failed to initialize Wasm code"


def load_failure_lines(
    message: str, plugin_name: str, emitted: Sequence[EnvoyLine]
) -> list[tuple[str, str]]:
    """Envoy 1.40's error lines when a plugin cannot load (recorded from a static listener):
    the root cause (a link error, ``Wasm VM failed <reason>`` for code it cannot read; traps and
    plugin logs as they were written), ``Wasm VM failed <stage>``, then critical ``Plugin <name>
    failed to load``, ``Plugin configured to fail closed failed to load`` (whatever the policy)
    and ``Unable to create Wasm plugin <name>``."""
    lines = [(line.level, line.text) for line in emitted if line.level in ("error", "critical")]
    if message.startswith(_LINK_ERRORS):
        lines.append(("error", message))
    elif message.startswith(_CODE_ERRORS):
        lines.append(("error", f"Wasm VM failed {message}"))
    lines += [
        ("error", f"Wasm VM failed {_stage(message)}"),
        ("critical", f"Plugin {plugin_name} failed to load"),
        ("critical", "Plugin configured to fail closed failed to load"),
        ("critical", f"Unable to create Wasm plugin {plugin_name}"),
    ]
    return lines
