"""Fixtures of the red-team suite: real servers on 127.0.0.1, every process stopped at the end.

The fault suite's fixtures (a fake istiod, agents as real processes, an Envoy-like client) and
the cache suite's (a module server, a module cache) are reused as they are; see
tests/faults/conftest.py and tests/cache/conftest.py.
"""

from __future__ import annotations

from tests.cache.conftest import cache, fetch_settings, modserver  # noqa: F401
from tests.faults.conftest import echo, fake_envoy, istiod, make_agent, mods, workdir  # noqa: F401
