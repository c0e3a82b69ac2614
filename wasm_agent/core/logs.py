"""Structured logging on the standard ``logging`` module.

Call sites pass fields with ``extra={...}``; the formatter appends them as ``key=value`` (text)
or as JSON members. Never pass secrets (pull secrets, tokens, passwords) as fields or in
messages; URLs go through :func:`redact_url` first.

Belt and braces for what other code logs: both formatters pass the message, every field and
any traceback through :func:`scrub` (URL user-info, query strings, ``Authorization`` values,
``token=``/``password=`` pairs), and :func:`setup_logging` keeps the libraries' loggers
(httpx, httpcore, hpack, grpc, urllib3) at ``warning`` or above whatever ``--log-level`` says;
their lines are written as ``library log msg="..."`` so every line stays ``key=value``.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from urllib.parse import urlsplit

_STANDARD_ATTRS = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys()
    | {"message", "asctime", "taskName"}
)


# An OCI digest after "@" (``repo@sha256:<hex>``) is not a host: no user-info before it.
_DIGEST_AFTER_AT = re.compile(r"[A-Za-z0-9]+(?:[+._-][A-Za-z0-9]+)*:[A-Za-z0-9=_-]{32,}(?:[/?#]|$)")
_PATH_PARAMS = re.compile(r";[^/]*")


def _cut_userinfo(rest: str) -> tuple[str, str]:
    """``(marker, rest)``: ``rest`` (what follows ``scheme://``) from its host on.

    A password may hold an unencoded ``/``, ``?``, ``#`` or ``@``, so the user-info runs to the
    LAST ``@`` that is not an OCI digest's. When that ``@`` lies past where a URL parser would
    end the authority (so it may have been a path's or query's ``@``), ``marker`` is
    ``<redacted>@`` to show something was cut; otherwise it is empty."""
    cut = -1
    for at in range(len(rest) - 1, -1, -1):
        if rest[at] == "@" and not _DIGEST_AFTER_AT.match(rest, at + 1):
            cut = at
            break
    if cut < 0:
        return "", rest
    ends = [i for i in (rest.find(c) for c in "/?#") if 0 <= i < cut]
    return ("<redacted>@" if ends else ""), rest[cut + 1 :]


def redact_url(url: str) -> str:
    """``url`` without user-info, query string, fragment or ``;`` path parameters (any of them
    may carry credentials). Never raises; a password with an unencoded ``/``, ``?``, ``#`` or
    ``@`` is still cut (see :func:`_cut_userinfo`)."""
    head, sep, rest = url.partition("://")
    if not sep:
        head, rest = "", url
    marker, rest = _cut_userinfo(rest)
    try:
        parts = urlsplit("//" + rest)
    except ValueError:
        return f"{head}{sep}<unparseable url>" if sep else "<unparseable url>"
    netloc = _PATH_PARAMS.sub(";<redacted>", parts.netloc)  # "host:port;token=..."
    path = _PATH_PARAMS.sub(";<redacted>", parts.path)
    query = "?<redacted>" if parts.query else ""
    return f"{head}{sep}{marker}{netloc}{path}{query}"


LIBRARY_LOGGERS = ("httpx", "httpcore", "hpack", "grpc", "urllib3")
# user-info runs to the LAST "@" of the URL that is not an OCI digest's (a password may hold "/")
_USERINFO = re.compile(
    r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)[^\s\"'<>]*@"
    r"(?![A-Za-z0-9]+(?:[+._-][A-Za-z0-9]+)*:[A-Za-z0-9=_-]{32,})"
)
_PARAMS = re.compile(r"(?P<base>://(?:[^\s\"'<>?#;]|;<redacted>)*);(?!<redacted>)[^\s\"'<>?#/]*")
_QUERY = re.compile(r"(?P<base>://[^\s\"'<>?#]*)\?(?!<redacted>)[^\s\"'<>#]*")
_AUTH_HEADER = re.compile(
    r"(?i)(?P<name>\b(?:proxy-)?authorization\b[\"']?\s*[:=,]\s*[\"']?)(?:(?:bearer|basic)\s+)?"
    r"[^\s\"',)]+"
)
_SECRET_PAIR = re.compile(
    r"(?i)(?P<name>\b(?:access_token|refresh_token|token|password|passwd|secret|auth)=)"
    r"(?!<redacted>)[^\s&\"',)]+"
)


def scrub(text: str) -> str:
    """``text`` with URL user-info, query strings, Authorization values and
    ``token=``/``password=``-style values replaced."""
    if "://" in text:
        text = _USERINFO.sub(r"\g<scheme>", text)
        text = _QUERY.sub(r"\g<base>?<redacted>", text)
        for _ in range(8):  # one ";params" segment per URL and pass
            text, count = _PARAMS.subn(r"\g<base>;<redacted>", text)
            if not count:
                break
    text = _AUTH_HEADER.sub(r"\g<name><redacted>", text)
    return _SECRET_PAIR.sub(r"\g<name><redacted>", text)


def _fields(record: logging.LogRecord) -> dict[str, object]:
    fields = {k: v for k, v in vars(record).items() if k not in _STANDARD_ATTRS}
    if not record.name.startswith("wasm_agent"):  # a library: its message as a field
        fields = {"msg": record.getMessage(), **fields}
    return fields


def _message(record: logging.LogRecord) -> str:
    return scrub(record.getMessage()) if record.name.startswith("wasm_agent") else "library log"


class TextFormatter(logging.Formatter):
    """``2026-11-21T06:15:51Z info wasm_agent.cache: message key=value ...``"""

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        fields = " ".join(f"{k}={_quote(scrub(str(v)))}" for k, v in _fields(record).items())
        line = f"{stamp}Z {record.levelname.lower()} {record.name}: {_message(record)}"
        if fields:
            line = f"{line} {fields}"
        if record.exc_info:
            line = f"{line}\n{scrub(self.formatException(record.exc_info))}"
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log pipelines."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, object] = {
            "time": record.created,
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": _message(record),
        }
        doc.update(
            {
                k: v if isinstance(v, int | float | bool) else scrub(str(v))
                for k, v in _fields(record).items()
            }
        )
        if record.exc_info:
            doc["exception"] = scrub(self.formatException(record.exc_info))
        return json.dumps(doc, separators=(",", ":"))


def _quote(value: object) -> str:
    text = str(value)
    return json.dumps(text) if (" " in text or "\n" in text or not text) else text


def setup_logging(level: str = "info", fmt: str = "text") -> None:
    """Send ``wasm_agent`` logs to stderr at ``level`` in ``fmt`` ("text" or "json")."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    floor = max(logging.WARNING, root.level)
    for name in LIBRARY_LOGGERS:  # never their request lines (URLs) or debug traces
        logging.getLogger(name).setLevel(floor)
