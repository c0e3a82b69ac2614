"""One exception hierarchy for fetch failures; each class carries its metric result label.

Callers catch by meaning (``except ChecksumMismatch``) and count by ``error.result`` (the closed
set of Istio's ``wasm_remote_fetch_count{result}`` labels). Messages name the URL and the cause
and never a credential: URLs pass through :func:`wasm_agent.core.logs.redact_url`.
"""

from __future__ import annotations

from typing import ClassVar

from wasm_agent.core.errors import WasmAgentError
from wasm_agent.core.logs import redact_url


class FetchError(WasmAgentError):
    """A module could not be fetched, verified or validated."""

    result: ClassVar[str] = "fetch_failure"

    def __init__(self, url: str, cause: str) -> None:
        self.url = redact_url(url)
        self.cause = cause
        super().__init__(f"{self.url}: {cause}")


class UnsupportedScheme(FetchError):
    """The URL's scheme is not http, https, oci or file."""


class DownloadFailure(FetchError):
    """Transport errors, HTTP errors, timeouts, size cap, blocked addresses, auth failures."""

    result = "download_failure"


class RetriesExhausted(DownloadFailure):
    """Every attempt of a retried download failed (or the next backoff would pass the deadline).

    ``last`` is the last attempt's error, ``attempts`` how many were made; ``deadline`` is True
    when the retries stopped early because the next backoff would pass the fetch deadline.
    """

    def __init__(
        self, url: str, last: Exception, attempts: int, *, deadline: float | None = None
    ) -> None:
        self.last = last
        self.attempts = attempts
        self.deadline = deadline is not None
        cause = last.cause if isinstance(last, FetchError) else str(last)
        if deadline is not None:
            cause = f"fetch deadline of {deadline:g}s would pass before the next retry; {cause}"
        plural = "s" if attempts != 1 else ""
        super().__init__(url, f"{cause} (after {attempts} attempt{plural})")


class BlockedAddress(DownloadFailure):
    """The URL (or a redirect, or a token realm) resolves to an address the SSRF guard refuses."""


class AuthFailure(DownloadFailure):
    """Credentials were missing, malformed or refused (the message never includes them)."""


class ManifestFailure(FetchError):
    """An OCI manifest or index could not be fetched, parsed or used."""

    result = "manifest_failure"


class ChecksumMismatch(FetchError):
    """The bytes (or the OCI manifest) do not match the expected digest."""

    result = "checksum_mismatched"


class UnboxError(FetchError):
    """A gzip or tar wrapper is malformed, a bomb, or uses path tricks."""


class InvalidModule(FetchError):
    """The bytes are not Wasm, or wasmtime refuses to compile them."""


class SignatureFailure(FetchError):
    """A required signature is missing or does not verify."""
