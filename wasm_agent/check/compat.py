"""Proxy-Wasm compatibility with Envoy: ABI version, allocator, imports and callbacks.

The tables come from the reference host (``wasm_agent.host.abi``): the ``env`` functions
cpp-host links for each ABI version, the WASI functions Envoy serves, and the callback
signatures it binds. Unlike Envoy, which stops at the first missing import, every problem is
listed; the Envoy message for the first one is quoted so users can match their logs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from wasm_agent.check.model import Check, ModuleReport, Status
from wasm_agent.check.structure import Export, ModuleInfo
from wasm_agent.host import abi
from wasm_agent.host.abi import AbiVersion

_CODES = {"i": "i32", "I": "i64"}
_ORDER = list(AbiVersion)

HTTP_CALLBACKS = frozenset(
    "proxy_on_" + n
    for n in [
        "request_headers",
        "request_body",
        "request_trailers",
        "request_metadata",
        "response_headers",
        "response_body",
        "response_trailers",
        "response_metadata",
    ]
)
NETWORK_CALLBACKS = frozenset(
    "proxy_on_" + n
    for n in [
        "new_connection",
        "downstream_data",
        "upstream_data",
        "downstream_connection_close",
        "upstream_connection_close",
    ]
)


@dataclass
class Compat:
    """The checks plus what the report header shows (ABI version, filter kind)."""

    checks: list[Check] = field(default_factory=list)
    abi_version: AbiVersion | None = None
    kind: str = "none"


def host_signature(params: str, results: str) -> str:
    """A host table entry (``"ii"``, ``"i"``) as ``(i32 i32) -> (i32)``."""
    return f"({' '.join(_CODES[c] for c in params)}) -> ({' '.join(_CODES[c] for c in results)})"


def _host_table() -> Mapping[tuple[str, str], tuple[str, str, object]]:
    return abi.host_function_table()


def check_compat(info: ModuleInfo, envoy_abi: AbiVersion = AbiVersion.V0_2_1) -> Compat:
    """Run the compatibility checks on a parsed module for an Envoy serving up to ``envoy_abi``."""
    result = Compat()
    exports = info.export_map()
    version = _abi_check(result, exports, envoy_abi)
    table_version = version or envoy_abi
    _allocator_check(result, exports)
    _imports_check(result, info, table_version, declared=version is not None)
    _callbacks_check(result, exports, table_version)
    return result


def _abi_check(
    result: Compat, exports: dict[str, Export], envoy_abi: AbiVersion
) -> AbiVersion | None:
    markers = sorted(n for n, e in exports.items() if n.startswith("proxy_abi_version_"))
    funcs = {n for n in markers if exports[n].kind == "func"}
    version = abi.detect_version(funcs)
    unknown = [n for n in markers if n not in abi.ABI_MARKERS]
    details = {"declared": version.value if version else None, "markers": markers}
    if version is None:
        extra = f" (unknown marker: {', '.join(unknown)})" if unknown else ""
        result.checks.append(
            Check(
                "compat",
                "abi_version",
                Status.FAIL,
                f"Missing or unknown Proxy-Wasm ABI version{extra}",
                details,
            )
        )
        return None
    result.abi_version = version
    if _ORDER.index(version) > _ORDER.index(envoy_abi):
        result.checks.append(
            Check(
                "compat",
                "abi_version",
                Status.FAIL,
                f"declares ABI {version.value}, newer than the target Envoy's "
                f"{envoy_abi.value}: Missing or unknown Proxy-Wasm ABI version",
                details,
            )
        )
        return version
    note = f" (also exports {', '.join(unknown)}, ignored)" if unknown else ""
    result.checks.append(
        Check("compat", "abi_version", Status.PASS, f"declares ABI {version.value}{note}", details)
    )
    return version


def _allocator_check(result: Compat, exports: dict[str, Export]) -> None:
    for name in ("malloc", "proxy_on_memory_allocate"):
        export = exports.get(name)
        if export is not None and export.kind == "func":
            break
    else:
        result.checks.append(
            Check("compat", "allocator", Status.FAIL, "Wasm module is missing malloc function.")
        )
        return
    # cpp-host prefers malloc when both exist
    name = "malloc" if "malloc" in exports else "proxy_on_memory_allocate"
    want = "(i32) -> (i32)"
    got = exports[name].signature
    if got != want:
        result.checks.append(
            Check(
                "compat",
                "allocator",
                Status.FAIL,
                f"Bad function signature for: {name}, want: {want}, but the module exports: {got}",
            )
        )
        return
    result.checks.append(Check("compat", "allocator", Status.PASS, f"exports {name}"))


def _import_problem(imp, allowed: frozenset[str], table) -> str | None:
    """Why Envoy would refuse ``imp`` (its message), or None if Envoy links it."""
    if imp.kind in ("memory", "table"):
        return None
    missing = "Failed to load Wasm module due to a missing import: " + imp.where
    if imp.kind != "func":
        return missing
    known = (imp.module == "env" and imp.name in allowed) or (
        imp.module in abi.WASI_MODULES and imp.name in abi.WASI_FUNCTIONS
    )
    entry = table.get((imp.module, imp.name))
    if not known or entry is None:
        return missing
    host_sig = host_signature(entry[0], entry[1])
    if imp.signature != host_sig:
        return (
            "Failed to load Wasm module due to an import type mismatch: "
            f"{imp.where}, want: {imp.signature}, but host exports: {host_sig}"
        )
    return None


def _imports_check(result: Compat, info: ModuleInfo, version: AbiVersion, declared: bool) -> None:
    table = _host_table()
    allowed = abi.linked_names(version)
    rows, bad = [], []
    for imp in info.imports:
        problem = _import_problem(imp, allowed, table)
        rows.append(
            {
                "module": imp.module,
                "name": imp.name,
                "kind": imp.kind,
                "signature": imp.signature,
                "ok": problem is None,
                "problem": problem,
            }
        )
        if problem is not None:
            bad.append((imp, problem))
    env = sum(1 for i in info.imports if i.module == "env" and i.kind == "func")
    wasi = sum(1 for i in info.imports if i.module in abi.WASI_MODULES)
    against = f"ABI {version.value}" + ("" if declared else ", the target Envoy's newest")
    details = {"checked_against": version.value, "imports": rows}
    if not bad:
        result.checks.append(
            Check(
                "compat",
                "imports",
                Status.PASS,
                f"{_count(len(info.imports), 'import')}, all served by Envoy ({against}): "
                f"{env} env, {wasi} WASI"
                if info.imports
                else "no imports",
                details,
            )
        )
        return
    names = ", ".join(imp.where for imp, _ in bad)
    lines = [f"{imp.where}: {_short(problem)}" for imp, problem in bad]
    lines.append(f"Envoy refuses the module: {bad[0][1]}")
    result.checks.append(
        Check(
            "compat",
            "imports",
            Status.FAIL,
            f"{len(bad)} of {_count(len(info.imports), 'import')} not served by Envoy ({against}): "
            f"{names}",
            details,
            lines,
        )
    )


def _short(problem: str) -> str:
    if "type mismatch" in problem:
        return "signature " + problem.split(": ", 1)[1].split(", ", 1)[1]
    return "not provided"


def _callbacks_check(result: Compat, exports: dict[str, Export], version: AbiVersion) -> None:
    table = abi.callbacks_for(version)
    found, bad, ignored = [], [], []
    for name, export in exports.items():
        if export.kind != "func" or not name.startswith("proxy_on_"):
            continue
        if name == "proxy_on_memory_allocate":
            continue
        if name not in table:
            ignored.append(name)
            continue
        want = host_signature(*table[name])
        if export.signature != want:
            bad.append(
                f"Bad function signature for: {name}, want: {want}, "
                f"but the module exports: {export.signature}"
            )
        found.append(name)
    http = sorted(n for n in found if n in HTTP_CALLBACKS)
    network = sorted(n for n in found if n in NETWORK_CALLBACKS)
    kind = "both" if http and network else "http" if http else "network" if network else "none"
    result.kind = kind
    details = {"kind": kind, "http": http, "network": network, "callbacks": sorted(found),
               "ignored": sorted(ignored)}  # fmt: skip
    label = {
        "http": "HTTP filter",
        "network": "network filter",
        "both": "HTTP and network filter",
        "none": "neither an HTTP nor a network filter",
    }[kind]
    short = ", ".join(n.removeprefix("proxy_on_") for n in http + network) or "no stream callbacks"
    lines = [f"not a callback of ABI {version.value}, Envoy ignores it: {n}" for n in ignored]
    if bad:
        result.checks.append(
            Check("compat", "callbacks", Status.FAIL, bad[0], details, bad[1:] + lines)
        )
    elif kind == "none":
        result.checks.append(
            Check(
                "compat",
                "callbacks",
                Status.WARN,
                f"{label}: exports no HTTP or network stream callback",
                details,
                lines,
            )
        )
    else:
        result.checks.append(
            Check("compat", "callbacks", Status.PASS, f"{label} ({short})", details, lines)
        )


def check_plugin_type(report: ModuleReport, plugin_type: str) -> None:
    """Does the WasmPlugin's ``spec.type`` match the callbacks the module exports?"""
    if report.kind is None:
        return
    wanted = "network" if plugin_type == "NETWORK" else "http"
    if report.kind in (wanted, "both"):
        message = f"spec.type {plugin_type}: the module has {wanted} callbacks"
        report.add(Check("compat", "plugin_type", Status.PASS, message))
    else:
        message = (
            f"spec.type {plugin_type}, but the module exports no {wanted} callbacks "
            f"(it is {report.kind}): Envoy would never call it"
        )
        report.add(Check("compat", "plugin_type", Status.FAIL, message))


def _count(number: int, noun: str) -> str:
    """``1 import``, ``2 imports``."""
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"
