"""Envoy's front end around an HTTP filter: what the HTTP connection manager (HCM), the HTTP/1
codec and the router hand the plugin by default, and what the codec writes to the client.

Used by ``HostedPlugin.exchange(..., frontend=True)`` (the default):

- request headers in the order Envoy's HTTP/1 codec and HCM build them: ``:authority`` (from
  ``host``; repeated ones joined with ``,``), ``:path``, ``:method``, the other headers as given
  (lower-cased) less the ones HCM drops (``connection``, ``keep-alive``, ``proxy-connection``,
  ``upgrade``, ``expect``, ``te`` other than ``trailers``, every ``x-envoy-*``),
  ``content-length`` when there is a body, then ``:scheme`` (the client's
  ``x-forwarded-proto``, else ``http``), ``x-forwarded-proto: http`` and ``x-request-id`` (HCM;
  a fixed UUID per stream, so runs repeat); a client's ``x-forwarded-for`` makes its last entry
  ``source.address`` (port 0) and a client's ``connection: close`` closes the response too;
- a body as one data frame followed by an empty end-of-stream frame (the codec's
  ``onMessageComplete``), both ways;
- response headers with ``x-envoy-upstream-service-time`` appended (the router adds it before
  the filters see the response);
- upstream: the router appends ``x-envoy-expected-rq-timeout-ms`` (the route timeout; Envoy's
  default 15 s) to the request headers it forwards (``proxy_on_log`` sees it too);
- the router answers 503 ``invalid header value for: <name>`` (through the plugin's response
  callbacks) instead of sending a request whose header values hold control characters;
- to the client, as HCM encodes any response (upstream's, local or failed): ``date`` appended
  unless present, ``server: envoy`` (overwriting the plugin's), ``connection`` and
  ``upgrade`` removed (a plugin's ``keep-alive`` stays), and ``connection: close`` when the
  response starts before the request's end of stream reached HCM (HTTP/1 drains the
  connection); ``proxy_on_log`` sees them (recorded from Envoy 1.40);
- to the client: no body for a HEAD request or a 204/304 (``bodiless``), and a local reply
  to HEAD keeps its ``content-length`` but ends at the headers (no body callback);
- to the client: ``content-length: 0`` appended when a response without a body has no length
  (a local reply with an empty body), ``transfer-encoding: chunked`` when one with a body has
  none (checked against Envoy 1.40 in tests/conformance/golden).
"""

from __future__ import annotations

import email.utils
from collections.abc import Iterable

from wasm_agent.host.maps import HeaderMap
from wasm_agent.host.messages import Message
from wasm_agent.host.messages import set_header as _set

Pairs = list[tuple[str, str]]
SERVICE_TIME = "x-envoy-upstream-service-time"
EXPECTED_TIMEOUT = b"x-envoy-expected-rq-timeout-ms"
DEFAULT_ROUTE_TIMEOUT_MS = 15000  # Envoy's route timeout when the route sets none
# Removed from every response by HCM (mutateResponseHeaders, not an upgrade); Envoy 1.40 kept
# a plugin's keep-alive (hop-by-hop clearing is off by default)
HOP_BY_HOP = (b"connection", b"upgrade")
NO_BODY_STATUS = frozenset({204, 304})


def request_id(stream_number: int) -> str:
    """The ``x-request-id`` the host gives stream ``n`` (Envoy's is a random UUID4)."""
    return f"00000000-0000-4000-8000-{stream_number:012d}"


def request_headers(
    headers: Iterable[tuple[str, str]], body_size: int, stream_number: int
) -> Pairs:
    """The request headers as Envoy's HCM delivers them to the first filter."""
    given = [(name.lower(), value) for name, value in headers if _kept(name.lower(), value)]
    names = {name for name, _ in given}
    values = dict(given)
    hosts = [value for name, value in given if name == "host"]  # the codec joins repeats
    authority = values.get(":authority", ",".join(hosts) if hosts else "localhost")
    out: Pairs = [
        (":authority", authority),
        (":path", values.get(":path", "/")),
        (":method", values.get(":method", "GET")),
    ]
    skip = {":authority", ":path", ":method", "host", ":scheme"}
    out += [(name, value) for name, value in given if name not in skip]
    has_length = "content-length" in names or "transfer-encoding" in names
    method = out[2][1]
    if not has_length and (body_size or method in ("POST", "PUT", "PATCH")):
        out.append(("content-length", str(body_size)))
    scheme = values.get("x-forwarded-proto", "http")  # HCM trusts a client's XFP for :scheme
    out.append((":scheme", values.get(":scheme", scheme)))
    if "x-forwarded-proto" not in names:
        out.append(("x-forwarded-proto", "http"))
    if "x-request-id" not in names:
        out.append(("x-request-id", request_id(stream_number)))
    return out


# Request headers HCM drops before the filters (Envoy 1.40, sent by the client): hop-by-hop
# ones, ``expect: 100-continue`` (HCM answers it) and every ``x-envoy-*`` header.
_DROPPED_REQUEST = frozenset({"connection", "keep-alive", "proxy-connection", "upgrade", "expect"})


def _kept(name: str, value: str) -> bool:
    if name in _DROPPED_REQUEST or name.startswith("x-envoy-"):
        return False
    return name != "te" or value.lower() == "trailers"


def client_closes(headers: Iterable[tuple[str, str]]) -> bool:
    """The client sent ``connection: close``: HCM answers with ``connection: close`` too."""
    return any(name.lower() == "connection" and "close" in value.lower() for name, value in headers)


def forwarded_source(headers: Iterable[tuple[str, str]]) -> str | None:
    """The address HCM takes as the downstream's from ``x-forwarded-for`` (not using the
    remote address, Envoy's default: the last entry, port 0; recorded ``1.2.3.4:0``)."""
    values = [value for name, value in headers if name.lower() == "x-forwarded-for"]
    if not values:
        return None
    last = values[-1].split(",")[-1].strip()
    return f"{last}:0" if last else None


def response_headers(headers: Iterable[tuple[str, str]], service_time: str = "1") -> Pairs:
    """The upstream's response headers as the router hands them to the filters."""
    out = [(name.lower(), value) for name, value in headers]
    if not any(name == SERVICE_TIME for name, _ in out):
        out.append((SERVICE_TIME, service_time))
    return out


def frames(chunks: list[bytes]) -> list[bytes]:
    """Body chunks as the codec delivers them: the data, then an empty end-of-stream frame."""
    data = [chunk for chunk in chunks if chunk]
    return [*data, b""] if data else []


def bodiless(pairs: Pairs, head_request: bool) -> bool:
    """No body reaches the client: a reply to HEAD, or a 204/304 (Envoy 1.40: the plugin's
    body callback still ran, the client read no body; the headers are left as they are)."""
    status = next((value for name, value in pairs if name == ":status"), "200")
    return head_request or (status.isdigit() and int(status) in NO_BODY_STATUS)


def client_headers(pairs: Pairs, body_size: int) -> Pairs:
    """What the HTTP/1 codec writes: a length (or chunked encoding) when the headers lack one."""
    names = {name for name, _ in pairs}
    if "content-length" in names or "transfer-encoding" in names:
        return pairs
    status = next((value for name, value in pairs if name == ":status"), "200")
    if status.isdigit() and (int(status) in NO_BODY_STATUS or int(status) < 200):
        return pairs
    if body_size == 0:
        return [*pairs, ("content-length", "0")]
    return [*pairs, ("transfer-encoding", "chunked")]


def route_request(headers: HeaderMap, timeout_ms: int) -> None:
    """What the router adds to the request headers it forwards upstream."""
    if timeout_ms > 0:
        _set(headers, EXPECTED_TIMEOUT, str(timeout_ms).encode())


def encode_response(
    headers: HeaderMap, request_complete: bool, now_ns: int, close: bool = False
) -> None:
    """What HCM adds to every response's headers after the filters (``encodeHeaders``);
    ``close``: the client asked to close the connection."""
    if headers.get(b"date") is None:
        date = email.utils.formatdate(now_ns / 1e9, usegmt=True)
        headers.add(b"date", date.encode())
    _set(headers, b"server", b"envoy")
    for hop in HOP_BY_HOP:
        headers.remove(hop)
    if close or not request_complete:
        _set(headers, b"connection", b"close")


_TOKEN = frozenset(b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyz")


def invalid_header(headers: HeaderMap) -> str | None:
    """Envoy's router check before sending a request upstream (``checkValidRequestHeaders``):
    the first header whose name is not a lower-case token (pseudo-headers aside) or whose
    value holds a control character other than tab; None when all are valid (Envoy 1.40:
    a plugin's header value with a newline got 503 "invalid header value for: <name>")."""
    for key, value in headers.entries:
        name = key[1:] if key.startswith(b":") else key
        if not name or any(c not in _TOKEN for c in name):
            return "invalid header name: " + key.decode("latin-1")
        if any((c < 0x20 and c != 0x09) or c == 0x7F for c in value):
            return "invalid header value for: " + key.decode("latin-1")
    return None


def framed(pairs: Pairs, body: bytearray) -> bytearray | None:
    """``body`` as a reader bound by ``content-length`` gets it: cut to the length, or None
    when it is shorter (the reader keeps waiting for the rest)."""
    length = next((value for name, value in pairs if name == "content-length"), None)
    if length is None or not length.isdigit():
        return body
    if len(body) < int(length):
        return None
    return body[: int(length)]


def as_read(message: Message) -> Message | None:
    """What an HTTP/1 upstream reads of a complete request (see ``framed``); None while it
    waits for the bytes the request announced."""
    if message.headers is None or not message.complete:
        return message
    body = framed(message.headers.pairs(), message.body)
    if body is None:
        return None
    if len(body) == len(message.body):
        return message
    return Message(message.headers, body, message.trailers, message.complete)
