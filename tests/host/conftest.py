"""Host tests: compiled modules go to one temporary cache directory per session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.fixture(scope="session", autouse=True)
def host_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    mp = pytest.MonkeyPatch()
    mp.setenv("WASM_AGENT_HOST_CACHE", str(tmp_path_factory.mktemp("host-cache")))
    yield
    mp.undo()
