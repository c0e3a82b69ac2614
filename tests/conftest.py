"""Shared fixtures. Fixtures that start real processes live in ``tests/support/``."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.echo import EchoServer
from tests.support.registry import (  # noqa: F401 - session fixtures: real docker-registry
    oci_pusher,
    oci_registry,
    oci_registry_basic,
    oci_registry_token,
    oci_token_server,
)


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    """An empty cache directory for one test."""
    path = tmp_path / "cache"
    return path


@pytest.fixture
def echo_upstream():
    """A running echo HTTP server (``.port``, ``.requests``)."""
    with EchoServer() as server:
        yield server
