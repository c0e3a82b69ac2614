"""Shared fixtures. Fixtures that start real processes live in ``tests/support/``."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.echo import EchoServer


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
