"""Load test in the reference host: link, start, ``proxy_on_vm_start``, ``proxy_on_configure``.

``start_plugin`` runs the whole sequence and raises ``LoadError`` with Envoy's message; the
message tells which stage failed, so the report shows one line per stage: stages before the
failing one passed, later ones were not reached.
"""

from __future__ import annotations

import time

from wasm_agent.check.model import Check, Status
from wasm_agent.host.harness import HostedPlugin, LoadError, start_plugin

STAGES = ("instantiate", "start", "on_vm_start", "on_configure")
_START_FUNCS = ("_initialize", "main", "_start")


def failed_stage(message: str) -> str:
    """Which stage a LoadError message belongs to."""
    if message.startswith("Function: "):
        func = message.removeprefix("Function: ").split(" ", 1)[0]
        if func in _START_FUNCS:
            return "start"
        if func in ("proxy_on_vm_start", "proxy_on_context_create"):
            return "on_vm_start"
        if func == "proxy_on_configure":
            return "on_configure"
        return "instantiate"  # the allocator, called from a host function while linking
    if message == "Failed to start base Wasm":
        return "on_vm_start"
    if message == "Failed to configure base Wasm plugin":
        return "on_configure"
    return "instantiate"


def load_checks(
    data: bytes,
    config: bytes,
    exports: set[str],
    root_id: str = "",
    start_section: bool = False,
    capabilities: frozenset[str] | None = None,
) -> tuple[list[Check], HostedPlugin | None]:
    """Start the plugin with ``config``; return one check per stage and the running plugin."""

    started = time.perf_counter()
    try:
        hosted = start_plugin(data, plugin_config=config, root_id=root_id,
                              allowed_capabilities=capabilities)  # fmt: skip
        failure = None
    except LoadError as error:
        hosted, failure = None, str(error)
    elapsed = (time.perf_counter() - started) * 1000
    start_fn = next((f for f in ("_initialize", "_start") if f in exports), None)
    if start_fn:
        start_text = f"{start_fn} ran"
    elif start_section:
        start_text = "the start section ran at instantiation"
    else:
        start_text = "no _initialize or _start export (nothing to run)"
    passed_text = {
        "instantiate": "linked and instantiated",
        "start": start_text,
        "on_vm_start": "proxy_on_vm_start returned true"
        if "proxy_on_vm_start" in exports
        else "no proxy_on_vm_start export (treated as success)",
        "on_configure": f"proxy_on_configure returned true with {_config_text(config)}"
        if "proxy_on_configure" in exports
        else "no proxy_on_configure export (treated as success)",
    }
    stage = failed_stage(failure) if failure is not None else None
    checks: list[Check] = []
    reached = True
    for name in STAGES:
        if not reached:
            checks.append(Check("load", name, Status.SKIP, f"not reached: {stage} failed"))
            continue
        if name == stage:
            checks.append(
                Check(
                    "load",
                    name,
                    Status.FAIL,
                    failure or "",
                    {"envoy_message": failure},
                    ["Envoy: " + (failure or "")],
                )
            )
            reached = False
            continue
        checks.append(Check("load", name, Status.PASS, passed_text[name]))
    logs = []
    if hosted is not None:
        logs = [
            {"level": e.level.name.lower(), "message": e.message}
            for e in hosted.logs
            if e.context_id >= 0
        ]
    checks[-1].details["plugin_logs"] = logs
    checks[0].duration_ms = elapsed
    return checks, hosted


def _config_text(config: bytes) -> str:
    if not config:
        return "an empty configuration"
    return f"a {len(config)}-byte configuration"
