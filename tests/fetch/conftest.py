"""Fixtures for fetch tests: a real module server and fast retry settings."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.modserver import ModServer, TLSFiles, self_signed_cert
from wasm_agent.fetch.retry import Backoff


@pytest.fixture
def modserver() -> Iterator[ModServer]:
    """A plain-HTTP :class:`ModServer` on 127.0.0.1."""
    with ModServer() as server:
        yield server


@pytest.fixture
def tls_files(tmp_path: Path) -> TLSFiles:
    return self_signed_cert(tmp_path / "tls")


@pytest.fixture
def tls_modserver(tls_files: TLSFiles) -> Iterator[ModServer]:
    """An HTTPS :class:`ModServer` with a self-signed certificate (``.tls.cert``)."""
    with ModServer(tls=tls_files) as server:
        yield server


@pytest.fixture
def fast_backoff() -> Backoff:
    """Millisecond backoff so retry tests do not wait seconds."""
    return Backoff(initial=0.005, max_interval=0.02)
