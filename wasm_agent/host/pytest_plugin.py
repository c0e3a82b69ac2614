"""pytest fixtures for plugin repositories (entry point ``pytest11``: ``wasm_agent``).

After ``pip install wasm-agent`` a plugin's tests need no conftest::

    # pytest --wasm-plugin build/plugin.wasm   (or ini ``wasm_plugin = build/plugin.wasm``,
    # or $WASM_PLUGIN, or @pytest.mark.wasm_plugin("x.wasm", plugin_config=b"{}") per test)
    def test_adds_header(wasm_plugin):
        ex = wasm_plugin.exchange({":path": "/", ":authority": "h"}, upstream=lambda r: (
            {":status": "200"}, b"ok"))
        assert ex.client.headers.to_dict()["x-added"] == "1"

Fixtures:

- ``wasm_plugin``: the module started with ``start_plugin`` (keyword arguments from the
  ``wasm_plugin`` marker, then the ``wasm_plugin_options`` fixture); shut down after the test.
- ``start_wasm_plugin(module=None, **options)``: start more (each is shut down after the test).
- ``wasm_plugin_options``: a dict of ``start_plugin`` arguments; override it in a conftest.
- ``wasm_module_path``: the module the options name.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from wasm_agent.host.harness import HostedPlugin, start_plugin

MARKER = "wasm_plugin"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("wasm-agent", "Proxy-Wasm plugins in wasm-agent's reference host")
    group.addoption("--wasm-plugin", dest="wasm_plugin", default=None,
                    help="the .wasm module the wasm_plugin fixture starts")  # fmt: skip
    parser.addini("wasm_plugin", "the .wasm module the wasm_plugin fixture starts", default="")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", f"{MARKER}(module=None, **options): the module and start_plugin() options"
    )


def _configured_module(config: pytest.Config) -> str | None:
    value = config.getoption("wasm_plugin") or config.getini("wasm_plugin")
    return str(value) if value else os.environ.get("WASM_PLUGIN") or None


@pytest.fixture
def wasm_plugin_options() -> dict[str, Any]:
    """``start_plugin`` keyword arguments for ``wasm_plugin`` (override in a conftest)."""
    return {}


@pytest.fixture
def wasm_module_path(request: pytest.FixtureRequest) -> Path:
    """The module: the marker's first argument, ``--wasm-plugin``, ini or $WASM_PLUGIN."""
    marker = request.node.get_closest_marker(MARKER)
    module = marker.args[0] if marker is not None and marker.args else None
    module = module or _configured_module(request.config)
    if not module:
        raise pytest.UsageError(
            "no Proxy-Wasm module: pass --wasm-plugin PATH, set the wasm_plugin ini option or "
            "$WASM_PLUGIN, or mark the test @pytest.mark.wasm_plugin('plugin.wasm')"
        )
    path = Path(module)
    if not path.is_absolute():
        path = Path(str(request.config.rootpath)) / path
    if not path.is_file():
        raise pytest.UsageError(f"Proxy-Wasm module not found: {path}")
    return path


@pytest.fixture
def start_wasm_plugin(
    request: pytest.FixtureRequest, wasm_plugin_options: dict[str, Any]
) -> Iterator[Callable[..., HostedPlugin]]:
    """A factory: ``start_wasm_plugin(module=None, **options)``; stopped after the test."""
    started: list[HostedPlugin] = []

    def start(module: str | Path | bytes | None = None, **options: Any) -> HostedPlugin:
        if module is None:
            module = request.getfixturevalue("wasm_module_path")
        marker = request.node.get_closest_marker(MARKER)
        merged = {**(marker.kwargs if marker is not None else {}), **wasm_plugin_options}
        host = start_plugin(module, **{**merged, **options})
        started.append(host)
        return host

    yield start
    for host in started:
        host.shutdown()


@pytest.fixture
def wasm_plugin(start_wasm_plugin: Callable[..., HostedPlugin]) -> HostedPlugin:
    """The plugin under test, loaded, started and configured like Envoy does."""
    return start_wasm_plugin()
