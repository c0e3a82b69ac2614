"""The cache's own error: a module could not be stored."""

from __future__ import annotations

from wasm_agent.fetch.errors import FetchError


class CacheWriteError(FetchError):
    """The module could not be stored (unwritable directory, disk full, unsafe cache).

    A :class:`~wasm_agent.fetch.errors.FetchError` (``result`` ``fetch_failure``): for the
    caller the module could not be made available, as with any failed fetch.
    """
