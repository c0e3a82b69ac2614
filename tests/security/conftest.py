"""Fixtures of the red-team suite: real servers on 127.0.0.1, every process stopped at the end.

The fault suite's fixtures (a fake istiod, agents as real processes, an Envoy-like client) are
reused as they are; see tests/faults/conftest.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.faults.conftest import echo, fake_envoy, istiod, make_agent, mods, workdir  # noqa: F401
from tests.support.modserver import ModServer
from wasm_agent.cache import ModuleCache
from wasm_agent.core.settings import CacheSettings, FetchSettings


@pytest.fixture
def modserver() -> Iterator[ModServer]:
    """A plain-HTTP module server on 127.0.0.1."""
    with ModServer() as server:
        yield server


@pytest.fixture
def fetch_settings() -> FetchSettings:
    return FetchSettings(http_max_retries=1, default_fetch_timeout=30.0)


@pytest.fixture
def cache(cache_dir: Path, fetch_settings: FetchSettings) -> Iterator[ModuleCache]:
    module_cache = ModuleCache(CacheSettings(directory=cache_dir), fetch_settings)
    yield module_cache
    module_cache.close()
