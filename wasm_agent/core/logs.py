"""Structured logging on the standard ``logging`` module.

Call sites pass fields with ``extra={...}``; the formatter appends them as ``key=value`` (text)
or as JSON members. Never pass secrets (pull secrets, tokens, passwords) as fields or in
messages; URLs go through :func:`redact_url` first.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from urllib.parse import urlsplit, urlunsplit

_STANDARD_ATTRS = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys()
    | {"message", "asctime", "taskName"}
)


def redact_url(url: str) -> str:
    """Return ``url`` without user-info or query string (either may carry credentials)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable url>"
    netloc = parts.netloc.rsplit("@", 1)[-1]
    query = "<redacted>" if parts.query else ""
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def _fields(record: logging.LogRecord) -> dict[str, object]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD_ATTRS}


class TextFormatter(logging.Formatter):
    """``2026-11-21T06:15:51Z info wasm_agent.cache: message key=value ...``"""

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        fields = " ".join(f"{k}={_quote(v)}" for k, v in _fields(record).items())
        line = f"{stamp}Z {record.levelname.lower()} {record.name}: {record.getMessage()}"
        if fields:
            line = f"{line} {fields}"
        if record.exc_info:
            line = f"{line}\n{self.formatException(record.exc_info)}"
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log pipelines."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, object] = {
            "time": record.created,
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        doc.update(
            {
                k: v if isinstance(v, int | float | bool) else str(v)
                for k, v in _fields(record).items()
            }
        )
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc, separators=(",", ":"))


def _quote(value: object) -> str:
    text = str(value)
    return json.dumps(text) if (" " in text or not text) else text


def setup_logging(level: str = "info", fmt: str = "text") -> None:
    """Send ``wasm_agent`` logs to stderr at ``level`` in ``fmt`` ("text" or "json")."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
