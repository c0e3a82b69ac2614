"""One module through every check: input, structure, compatibility, load test, spec cases."""

from __future__ import annotations

import hashlib
import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path

import wasmtime

from wasm_agent.check.cases import run_case
from wasm_agent.check.compat import check_compat
from wasm_agent.check.load import load_checks
from wasm_agent.check.model import Check, ModuleReport, Status
from wasm_agent.check.spec import Spec
from wasm_agent.check.structure import (
    Export,
    Import,
    Limits,
    MalformedModule,
    ModuleInfo,
    parse_module,
)
from wasm_agent.core.errors import WasmAgentError
from wasm_agent.host import compile as host_compile
from wasm_agent.host.abi import AbiVersion, type_str


class InputError(WasmAgentError):
    """A module that cannot be read; the message says why."""


@dataclass(frozen=True)
class Options:
    """What applies to every module of one run."""

    envoy_abi: str = "0.2.1"
    spec: Spec | None = None
    # Envoy's capability allow-list (``--allow-capability``); None: the spec's, else all
    allowed_capabilities: frozenset[str] | None = None


def read_local(path: Path, limit: int) -> bytes:
    """The bytes of a local module, refusing directories, empty files and files over ``limit``
    (checked with ``fstat`` before reading, so a huge file is never read)."""
    try:
        with open(path, "rb") as handle:
            info = os.fstat(handle.fileno())
            if stat.S_ISDIR(info.st_mode):
                raise InputError(f"{path}: is a directory, not a Wasm module")
            if info.st_size > limit:
                raise InputError(
                    f"{path}: {info.st_size} bytes, over the {limit}-byte limit "
                    "(ISTIO_WASM_MAX_BINARY_SIZE_BYTES)"
                )
            data = handle.read(limit + 1)
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a directory, not a Wasm module") from None
    except OSError as error:
        raise InputError(f"{path}: cannot read: {error.strerror}") from None
    if len(data) > limit:
        raise InputError(f"{path}: over the {limit}-byte limit")
    if not data:
        raise InputError(f"{path}: empty file (0 bytes), not a Wasm module")
    return data


def check_module(
    report: ModuleReport, data: bytes, config: bytes, options: Options, root_id: str = ""
) -> None:
    """Run every check on ``data`` (configured with ``config``, root context ``root_id``) and
    append them to ``report``."""
    started = time.perf_counter()
    report.size = len(data)
    report.sha256 = report.sha256 or hashlib.sha256(data).hexdigest()
    try:
        _check(report, data, config, options, root_id)
    finally:
        report.duration_ms += (time.perf_counter() - started) * 1000


def _check(
    report: ModuleReport, data: bytes, config: bytes, options: Options, root_id: str
) -> None:
    info: ModuleInfo | None = None
    if data[:4] != b"\0asm":
        report.add(Check("structure", "format", Status.FAIL,
                         "not a Wasm module (no \\0asm magic number); Envoy: Failed to parse "
                         "corrupted Wasm module"))  # fmt: skip
        return
    try:
        info = parse_module(data)
        parse_error = None
    except MalformedModule as error:
        parse_error = str(error)
    module, compile_check = _compile(data)
    if parse_error is not None and module is not None:  # wasmtime knows better: use its view
        info = _info_from_wasmtime(module)
    if parse_error is None or module is not None:
        digest = f"sha256 {report.sha256}"
        if report.oci_digest:
            digest += f", OCI digest {report.oci_digest}"
        note = f" (sections read by wasmtime: {parse_error})" if parse_error else ""
        report.add(Check("structure", "format", Status.PASS,
                         f"valid Wasm binary, {len(data)} bytes, {digest}{note}",
                         {"size": len(data), "sha256": report.sha256,
                          "oci_digest": report.oci_digest}))  # fmt: skip
    else:
        report.add(Check("structure", "format", Status.FAIL, f"malformed Wasm: {parse_error}"))
    report.add(compile_check)
    if info is None:
        return
    _layout_checks(report, info)

    compat = check_compat(info, AbiVersion(options.envoy_abi))
    report.abi_version = compat.abi_version.value if compat.abi_version else None
    report.kind = compat.kind
    report.checks.extend(compat.checks)
    if module is None:
        report.add(
            Check("load", "instantiate", Status.SKIP, "not run: the module does not compile")
        )
        return

    allowed = options.allowed_capabilities
    if allowed is None and options.spec is not None and options.spec.capabilities is not None:
        allowed = frozenset(options.spec.capabilities)
    capabilities = capability_check(info, allowed)
    if allowed is not None:  # without an allow-list the list goes into load.instantiate
        report.add(capabilities)
    exports = {e.name for e in info.exports}
    load, _hosted = load_checks(data, config, exports, root_id, info.start is not None,
                                capabilities=allowed)  # fmt: skip
    load[0].details["capabilities"] = capabilities.details
    report.checks.extend(load)
    if options.spec is None:
        return
    broken = next((c for c in load[:2] if c.status is Status.FAIL), None)

    spec_config = options.spec.config if options.spec.config is not None else config
    for case in options.spec.cases:
        if broken is not None:
            report.add(Check("spec", case.name, Status.SKIP, "not run: the module does not load",
                             location=case.location))  # fmt: skip
            continue
        report.add(run_case(data, case, spec_config, root_id, capabilities=allowed))


def capability_check(info: ModuleInfo, allowed: frozenset[str] | None) -> Check:
    """The capabilities the module uses (host functions it imports, callbacks it exports), and
    the ones outside ``allowed`` (Envoy's capability_restriction_config)."""
    imported = sorted({i.name for i in info.imports if i.kind == "func"})
    callbacks = sorted(e.name for e in info.exports if e.name.startswith("proxy_on_"))
    used = imported + callbacks
    details = {"imports": imported, "callbacks": callbacks}
    functions = "host function" if len(imported) == 1 else "host functions"
    hooks = "callback" if len(callbacks) == 1 else "callbacks"
    text = f"{len(imported)} {functions}, {len(callbacks)} {hooks}: {', '.join(used)}"
    if allowed is None:
        return Check("compat", "capabilities", Status.PASS, text, details)
    outside = [name for name in used if name not in allowed]
    details["not_allowed"] = outside
    if not outside:
        return Check("compat", "capabilities", Status.PASS, f"all allowed; {text}", details)
    lines = [f"{name}: " + ("calls fail with INTERNAL_FAILURE and Envoy logs 'Attempted call to "
                            "restricted proxy-wasm capability'" if name in imported
                            else "never called by Envoy") for name in outside]  # fmt: skip
    return Check("compat", "capabilities", Status.FAIL,
                 f"outside the allow-list: {', '.join(outside)}", details, lines)  # fmt: skip


def _compile(data: bytes) -> tuple[object | None, Check]:
    """Compile with the reference host's engine and compiled-module cache (shared with the
    load test and the spec cases, so the module compiles once, or never on a warm run)."""

    before = dict(host_compile.STATS)
    started = time.perf_counter()
    try:
        module = host_compile.compile_module(data, fuel=True)
    except wasmtime.WasmtimeError as error:
        elapsed = (time.perf_counter() - started) * 1000
        text = str(error).strip().splitlines()
        reason = text[0] if text else "compile failed"
        return None, Check("structure", "compile", Status.FAIL,
                           f"wasmtime cannot compile it: {reason}",
                           {"error": str(error)}, [f"  {line}" for line in text[1:6]],
                           elapsed)  # fmt: skip
    elapsed = (time.perf_counter() - started) * 1000
    if host_compile.STATS["compiles"] > before["compiles"]:
        how = "compiled"
    elif host_compile.STATS["disk_hits"] > before["disk_hits"]:
        how = "loaded from the compile cache"
    else:
        how = "already compiled in this run"
    version = host_compile.wasmtime_version()
    check = Check("structure", "compile", Status.PASS,
                  f"{how} with wasmtime {version} in {elapsed:.0f} ms",
                  {"how": how, "wasmtime": version}, [], elapsed)  # fmt: skip
    return module, check


def _layout_checks(report: ModuleReport, info: ModuleInfo) -> None:
    exports = info.export_map()
    mem_exports = [e.name for e in info.exports if e.kind == "memory"]
    if not info.memories:
        report.add(Check("structure", "memory", Status.WARN,
                         "no memory: the host cannot pass any data to the plugin"))  # fmt: skip
    else:
        parts = [_limits_text(m, memory=True) for m in info.memories]
        imported = any(i.kind == "memory" for i in info.imports)
        where = "imported" if imported else f"exported as {', '.join(mem_exports) or '(none)'}"
        report.add(Check("structure", "memory", Status.PASS, f"{'; '.join(parts)}; {where}",
                         {"memories": [m.to_dict() for m in info.memories],
                          "exported": mem_exports, "imported": imported}))  # fmt: skip
    tables = [_limits_text(t, memory=False) for t in info.tables]
    report.add(Check("structure", "table", Status.PASS, "; ".join(tables) or "no table",
                     {"tables": [t.to_dict() for t in info.tables]}))  # fmt: skip
    modes = []
    if info.start is not None:
        modes.append(f"start section (function {info.start}) runs at instantiation")
    for name, label in (("_initialize", "reactor: _initialize"), ("_start", "command: _start")):
        if name in exports:
            modes.append(label)
    if "_initialize" in exports and "main" in exports:
        modes.append("main after _initialize")
    report.add(Check("structure", "start", Status.PASS, "; ".join(modes) or "no start function",
                     {"start_section": info.start,
                      "initialize": "_initialize" in exports,
                      "start": "_start" in exports}))  # fmt: skip


def _limits_text(limits: Limits, memory: bool) -> str:
    if memory:
        low = f"{limits.minimum} pages ({_size(limits.minimum * 65536)})"
        high = (
            f"max {limits.maximum} pages ({_size(limits.maximum * 65536)})"
            if limits.maximum is not None
            else "no max"
        )
        return f"memory: min {low}, {high}" + (", shared" if limits.shared else "")
    high = f"max {limits.maximum}" if limits.maximum is not None else "no max"
    return f"table: min {limits.minimum} elements, {high}"


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:g} {unit}" if unit == "B" else f"{n:.4g} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def _info_from_wasmtime(module: object) -> ModuleInfo:
    """Imports and exports from wasmtime when our reader does not know a newer encoding."""

    def describe(ty: object) -> tuple[str, str | None, Limits | None]:
        if isinstance(ty, wasmtime.FuncType):
            return "func", f"{type_str(ty.params)} -> {type_str(ty.results)}", None
        if isinstance(ty, wasmtime.MemoryType):
            return "memory", None, Limits(ty.limits.min, ty.limits.max)
        if isinstance(ty, wasmtime.TableType):
            return "table", None, Limits(ty.limits.min, ty.limits.max)
        return "global", None, None

    info = ModuleInfo()
    for imp in module.imports:  # type: ignore[attr-defined]
        kind, sig, limits = describe(imp.type)
        info.imports.append(Import(imp.module, imp.name or "", kind, sig, limits))
        if kind == "memory" and limits:
            info.memories.append(limits)
        elif kind == "table" and limits:
            info.tables.append(limits)
    for exp in module.exports:  # type: ignore[attr-defined]
        kind, sig, limits = describe(exp.type)
        info.exports.append(Export(exp.name, kind, sig))
        if kind == "memory" and limits:
            info.memories.append(limits)
        elif kind == "table" and limits:
            info.tables.append(limits)
    return info
