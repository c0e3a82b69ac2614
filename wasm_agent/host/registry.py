"""The host-function registry: every Proxy-Wasm and WASI function the host can link.

The functions live in the modules listed in ``MODULES`` (an explicit list: nothing registers
itself by being imported) and are marked with ``hostfn.host``; ``host_function_table()``
collects them once into ``hostfn.HOST_FUNCTIONS``, which ``vm`` links from.
"""

from __future__ import annotations

from types import ModuleType

from wasm_agent.host import (
    buffers,
    callouts,
    control,
    general,
    maps,
    metrics,
    properties,
    shared,
    wasi,
)
from wasm_agent.host.hostfn import HOST_FUNCTIONS, MARK, HostFn, HostImport

MODULES: tuple[ModuleType, ...] = (
    buffers,
    callouts,
    control,
    general,
    maps,
    metrics,
    properties,
    shared,
    wasi,
)


def collect(
    modules: tuple[ModuleType, ...] = MODULES,
) -> dict[tuple[str, str], tuple[str, str, HostFn]]:
    """``(import module, name) -> (params, results, function)`` for the marked functions."""
    table: dict[tuple[str, str], tuple[str, str, HostFn]] = {}
    for module in modules:
        for value in vars(module).values():
            spec = getattr(value, MARK, None)
            if isinstance(spec, HostImport) and callable(value):
                for where in spec.modules:
                    table[(where, spec.name)] = (spec.params, spec.results, value)
    return table


def host_function_table() -> dict[tuple[str, str], tuple[str, str, HostFn]]:
    """Every host function (collected on first use into ``hostfn.HOST_FUNCTIONS``)."""
    if not HOST_FUNCTIONS:
        HOST_FUNCTIONS.update(collect())
    return HOST_FUNCTIONS
