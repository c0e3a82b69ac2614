"""A protobuf wire-format scanner for the few top-level fields the proxy needs.

Every response from istiod passes through the proxy; only ECDS responses are decoded. To route
a response the proxy needs its ``type_url`` (field 4 of both ``DiscoveryResponse`` and
``DeltaDiscoveryResponse``) and, to track ACKs, a few fields of Envoy's requests. Decoding a
multi-megabyte CDS response to read one string would cost milliseconds, so these functions walk
the top-level tags and skip every value (varint, fixed, length-delimited, groups) without
decoding it. Malformed input raises :class:`WireError`; the scan always terminates (every step
advances the position). When a field occurs more than once the last occurrence wins, as in a
full parse.
"""

from __future__ import annotations

from dataclasses import dataclass

from wasm_agent.core.errors import WasmAgentError
from wasm_agent.xds.types import Flavour

MAX_FIELD_NUMBER = (1 << 29) - 1
_MAX_VARINT_BYTES = 10

Buffer = bytes | bytearray | memoryview


class WireError(WasmAgentError, ValueError):
    """The bytes are not a well-formed protobuf message."""


def _varint(buf: Buffer, pos: int, end: int) -> tuple[int, int]:
    """Decode the varint at ``pos``; return (value, position after it)."""
    start = pos
    result = 0
    shift = 0
    limit = min(end, pos + _MAX_VARINT_BYTES)
    while pos < limit:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
    if pos - start >= _MAX_VARINT_BYTES:
        raise WireError(f"varint longer than {_MAX_VARINT_BYTES} bytes at offset {start}")
    raise WireError(f"truncated varint at offset {start}")


def scan_fields(message: Buffer, wanted: frozenset[int]) -> dict[int, Buffer]:
    """Return the last length-delimited value of each ``wanted`` top-level field.

    Fields of other wire types with a wanted number are skipped (a parser keeps them as unknown
    fields). Raises :class:`WireError` on truncation, bad tags, bad wire types or unbalanced
    groups anywhere at the top level.
    """
    found: dict[int, Buffer] = {}
    groups: list[int] = []
    pos = 0
    end = len(message)
    while pos < end:
        tag = message[pos]
        if tag < 0x80:
            pos += 1
        else:
            tag, pos = _varint(message, pos, end)
        field = tag >> 3
        wire_type = tag & 7
        if field == 0 or field > MAX_FIELD_NUMBER:
            raise WireError(f"invalid field number {field} at offset {pos}")
        if wire_type == 2:
            # inline the common one- and two-byte lengths; _varint handles the rest
            length = message[pos] if pos < end else 0x80
            if length < 0x80:
                pos += 1
            elif pos + 1 < end and message[pos + 1] < 0x80:
                length = (length & 0x7F) | message[pos + 1] << 7
                pos += 2
            else:
                length, pos = _varint(message, pos, end)
            stop = pos + length
            if stop > end:
                raise WireError(f"field {field} runs past the end ({length} bytes at {pos})")
            if field in wanted and not groups:
                found[field] = message[pos:stop]
            pos = stop
        elif wire_type == 0:
            _, pos = _varint(message, pos, end)
        elif wire_type == 1 or wire_type == 5:
            pos += 8 if wire_type == 1 else 4
            if pos > end:
                raise WireError(f"truncated fixed-width field {field}")
        elif wire_type == 3:
            groups.append(field)
        elif wire_type == 4:
            if not groups or groups.pop() != field:
                raise WireError(f"unmatched end of group {field} at offset {pos}")
        else:
            raise WireError(f"invalid wire type {wire_type} at offset {pos}")
    if groups:
        raise WireError(f"unterminated group {groups[-1]}")
    return found


def _text(found: dict[int, Buffer], field: int) -> str:
    raw = found.get(field)
    if raw is None:
        return ""
    try:
        return bytes(raw).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise WireError(f"field {field} is not valid UTF-8") from exc


@dataclass(frozen=True, slots=True)
class ResponseHead:
    """What the proxy needs to route a (Delta)DiscoveryResponse."""

    type_url: str
    nonce: str


_RESPONSE_FIELDS = frozenset({4, 5})


def response_head(message: Buffer) -> ResponseHead:
    """Type URL (field 4) and nonce (field 5) of a DiscoveryResponse or DeltaDiscoveryResponse."""
    found = scan_fields(message, _RESPONSE_FIELDS)
    return ResponseHead(type_url=_text(found, 4), nonce=_text(found, 5))


def response_type_url(message: Buffer) -> str:
    """Field 4 (``type_url``) of a serialized (Delta)DiscoveryResponse, without decoding it."""
    return response_head(message).type_url


def response_nonce(message: Buffer) -> str:
    """Field 5 (``nonce``) of a serialized (Delta)DiscoveryResponse, without decoding it."""
    return response_head(message).nonce


@dataclass(frozen=True, slots=True)
class RequestHead:
    """What the proxy needs from Envoy's request to track ACKs and NACKs.

    ``version_info`` is empty for Delta requests (they carry per-resource versions instead);
    ``nack`` is true when ``error_detail`` is set.
    """

    type_url: str
    response_nonce: str
    version_info: str
    nack: bool


# (type_url, response_nonce, version_info or 0, error_detail) field numbers per flavour
_REQUEST_LAYOUT = {Flavour.SOTW: (4, 5, 1, 6), Flavour.DELTA: (2, 6, 0, 7)}


def request_head(message: Buffer, flavour: Flavour) -> RequestHead:
    """Type URL, response nonce, version and NACK flag of a (Delta)DiscoveryRequest."""
    type_url, nonce, version, error = _REQUEST_LAYOUT[flavour]
    found = scan_fields(message, frozenset({type_url, nonce, version, error}))
    return RequestHead(
        type_url=_text(found, type_url),
        response_nonce=_text(found, nonce),
        version_info=_text(found, version) if version else "",
        nack=error in found,
    )
