"""Fixtures for cache tests: a real module server, a cache, and the CLI as a real process."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.modserver import ModServer
from tests.support.registry import oci_pusher, oci_registry  # noqa: F401  (fixtures)
from wasm_agent.cache import ModuleCache
from wasm_agent.core.settings import CacheSettings, FetchSettings


@pytest.fixture
def modserver() -> Iterator[ModServer]:
    """A plain-HTTP :class:`ModServer` on 127.0.0.1 (counts requests per path)."""
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
