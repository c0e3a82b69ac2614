"""Local modules: ``file://`` URLs and plain paths, with the size cap and the sha256 check."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from urllib.parse import unquote, urlsplit

from wasm_agent.core.settings import FetchSettings
from wasm_agent.fetch.errors import ChecksumMismatch, DownloadFailure
from wasm_agent.fetch.model import FetchedModule, FetchRequest, Progress, normalize_sha256


def path_from_url(url: str) -> Path:
    """The local path of ``file:///abs/path`` (or ``file://localhost/…``)."""
    parts = urlsplit(url)
    if parts.scheme != "file":
        raise DownloadFailure(url, "not a file:// URL")
    if parts.netloc not in ("", "localhost"):
        raise DownloadFailure(url, f"file URL names a remote host {parts.netloc!r}")
    return Path(unquote(parts.path))


def _read(path: Path, url: str, limit: int) -> bytes:
    try:
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            if size > limit:
                raise DownloadFailure(url, f"module is {size} bytes, over the {limit}-byte limit")
            data = handle.read(limit + 1)
    except FileNotFoundError:
        raise DownloadFailure(url, f"no such file: {path}") from None
    except IsADirectoryError:
        raise DownloadFailure(url, f"is a directory: {path}") from None
    except OSError as error:
        raise DownloadFailure(url, f"cannot read {path}: {error.strerror}") from None
    if len(data) > limit:
        raise DownloadFailure(url, f"module is over the {limit}-byte limit")
    return data


async def fetch_file(
    request: FetchRequest, settings: FetchSettings, progress: Progress | None = None
) -> FetchedModule:
    """Read a local module (off the event loop), capped at ``settings.max_binary_size``."""
    path = path_from_url(request.url)
    data = await asyncio.to_thread(_read, path, request.url, settings.max_binary_size)
    if progress is not None:
        progress(len(data), len(data))
    fetched = FetchedModule.from_bytes(request.url, data)
    expected = normalize_sha256(request.sha256)
    if expected is not None and fetched.sha256 != expected:
        raise ChecksumMismatch(
            request.url, f"module has checksum {fetched.sha256}, which does not match {expected}"
        )
    return fetched
