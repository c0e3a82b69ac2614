"""Fetchers for remote Wasm modules (HTTP(S), OCI, file) and module validation.

``fetch_module`` is the one entry point; the scheme modules are imported lazily so a command
that never fetches (a warm ``prefetch``) does not pay for httpx.
"""

from __future__ import annotations

from wasm_agent.fetch.dispatch import fetch_module
from wasm_agent.fetch.errors import FetchError
from wasm_agent.fetch.model import FetchedModule, FetchRequest, Progress

__all__ = ["FetchError", "FetchRequest", "FetchedModule", "Progress", "fetch_module"]
