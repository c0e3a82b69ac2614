"""``fetch_module``: one URL to verified Wasm bytes, whatever the scheme.

The scheme modules are imported on first use, so code that never fetches does not pay for
httpx. Fetchers only fetch; the deadline and the ``wasm_remote_fetch_count`` metric are handled
here, once, for all of them, and the checksum and Wasm magic checks are run from here
(:func:`wasm_agent.fetch.checks.verify_fetched`).
"""

from __future__ import annotations

import importlib
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import TypeAlias

from wasm_agent.core.logs import redact_url
from wasm_agent.core.metrics import REGISTRY
from wasm_agent.core.settings import FetchSettings
from wasm_agent.fetch.checks import verify_fetched
from wasm_agent.fetch.errors import DownloadFailure, FetchError, UnsupportedScheme
from wasm_agent.fetch.model import FetchedModule, FetchRequest, Progress
from wasm_agent.fetch.model import normalize_sha256 as normalize_sha256

log = logging.getLogger(__name__)

REMOTE_FETCH_COUNT = REGISTRY.counter(
    "wasm_remote_fetch_count", "Wasm module remote fetches, by result.", labels=("result",)
).preset(  # Istio's closed set of results, at 0 from the start
    result=("success", "download_failure", "manifest_failure", "checksum_mismatched",
            "fetch_failure")
)  # fmt: skip

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_PATH_PREFIXES = ("/", "./", "../", "~")
# what every scheme's fetch function is: ``async (request, settings, progress) -> module``
Fetcher: TypeAlias = Callable[
    [FetchRequest, FetchSettings, Progress | None], Awaitable[FetchedModule]
]
# scheme -> (module, function), each function a :data:`Fetcher`
FETCHERS: dict[str, tuple[str, str]] = {
    "http": ("wasm_agent.fetch.http", "fetch_http"),
    "https": ("wasm_agent.fetch.http", "fetch_http"),
    "oci": ("wasm_agent.fetch.oci", "fetch_oci"),
    "file": ("wasm_agent.fetch.file", "fetch_file"),
}


def normalize_url(url: str) -> str:
    """The canonical URL: a path (``/``, ``./``, ``../``, ``~``) becomes ``file://`` with an
    absolute path; no scheme means OCI (Istio's WasmPlugin rule); the scheme is lowercased."""
    url = url.strip()
    match = _SCHEME.match(url)
    if match:
        return match.group(1).lower() + url[len(match.group(1)) :]
    if url.startswith(_PATH_PREFIXES):
        return Path(url).expanduser().absolute().as_uri()
    return "oci://" + url


def url_scheme(url: str) -> str:
    """The lowercase scheme of a normalized URL."""
    return url.split("://", 1)[0].lower()


def _fetcher(url: str) -> Fetcher:
    scheme = url_scheme(url)
    if scheme not in FETCHERS:
        raise UnsupportedScheme(url, f"unsupported Wasm module downloading URL scheme: {scheme}")
    module_name, function = FETCHERS[scheme]
    return getattr(importlib.import_module(module_name), function)


async def fetch_module(
    request: FetchRequest, settings: FetchSettings, progress: Progress | None = None
) -> FetchedModule:
    """Fetch ``request.url`` within the deadline, verify its checksum and Wasm magic.

    Raises :class:`FetchError` subclasses; counts ``wasm_remote_fetch_count{result}``.
    """
    import asyncio  # noqa: PLC0415 - keeps warm `prefetch` < 100 ms (docs/design.md, Layers)

    url = normalize_url(request.url)
    deadline = request.timeout or settings.default_fetch_timeout
    try:
        fetch = _fetcher(url)
        try:
            async with asyncio.timeout(deadline):
                fetched = await fetch(replace(request, url=url), settings, progress)
        except TimeoutError:
            raise DownloadFailure(
                url, f"fetch did not complete within the {deadline:g}s deadline"
            ) from None
        verify_fetched(fetched, url, normalize_sha256(request.sha256))
    except FetchError as error:
        REMOTE_FETCH_COUNT.inc(result=error.result)
        log.warning(
            "Wasm module fetch failed",
            extra={"url": redact_url(url), "result": error.result, "error": error.cause},
        )
        raise
    REMOTE_FETCH_COUNT.inc(result="success")
    return fetched
