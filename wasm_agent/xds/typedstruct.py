"""Unwrap ``udpa.type.v1.TypedStruct`` / ``xds.type.v3.TypedStruct`` into a typed message.

A TypedStruct carries a message as a ``google.protobuf.Struct`` (its JSON form) plus the
message's type URL. Conversion is strict: an unknown field or a wrongly typed value is an error,
so nothing the control plane sent is silently dropped. Error messages never quote the values
of ``ISTIO_META_*`` environment keys (the pull secret is one).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from google.protobuf import any_pb2, json_format, struct_pb2
from google.protobuf.message import DecodeError, Message
from udpa.type.v1 import typed_struct_pb2 as udpa_typed_struct_pb2
from xds.type.v3 import typed_struct_pb2 as xds_typed_struct_pb2

from wasm_agent.core.errors import WasmAgentError
from wasm_agent.xds.types import UDPA_TYPED_STRUCT_TYPE, XDS_TYPED_STRUCT_TYPE, type_name

T = TypeVar("T")

_TYPED_STRUCTS = {
    type_name(UDPA_TYPED_STRUCT_TYPE): udpa_typed_struct_pb2.TypedStruct,
    type_name(XDS_TYPED_STRUCT_TYPE): xds_typed_struct_pb2.TypedStruct,
}
_SECRET_KEY_PREFIX = "ISTIO_META_"


class StructError(WasmAgentError, ValueError):
    """A TypedStruct that does not parse or does not convert to its declared type."""


def unwrap_typed_struct(
    typed_config: any_pb2.Any, kinds: Mapping[str, tuple[T, type[Message]]]
) -> tuple[T, Message] | None:
    """Convert a TypedStruct ``typed_config`` whose inner type name is a key of ``kinds``.

    ``kinds`` maps a message name to (tag, message class); returns (tag, message) or ``None``
    when ``typed_config`` is not a TypedStruct or wraps another type.
    """
    cls = _TYPED_STRUCTS.get(type_name(typed_config.type_url))
    if cls is None:
        return None
    wrapper = cls()
    try:
        wrapper.ParseFromString(typed_config.value)
    except DecodeError:
        raise StructError(f"typed_config does not parse as {cls.DESCRIPTOR.full_name}") from None
    kind = kinds.get(type_name(wrapper.type_url))
    if kind is None:
        return None
    tag, message_cls = kind
    message = message_cls()
    try:
        json_format.ParseDict(_python(wrapper.value), message)
    # AttributeError: json_format on an Any whose "@type" is null
    except (
        json_format.ParseError,
        ValueError,
        TypeError,
        KeyError,
        AttributeError,
        RecursionError,
    ) as exc:
        cause = _redact(str(exc), wrapper.value)
        raise StructError(
            f"TypedStruct value does not convert to {message_cls.DESCRIPTOR.full_name}: {cause}"
        ) from None
    return tag, message


def _python(value: struct_pb2.Struct | struct_pb2.Value) -> Any:
    """A Struct or Value as plain Python (what ``MessageToDict`` gives, without its overhead)."""
    if isinstance(value, struct_pb2.Struct):
        return {key: _python(item) for key, item in value.fields.items()}
    kind = value.WhichOneof("kind")
    if kind == "struct_value":
        return {key: _python(item) for key, item in value.struct_value.fields.items()}
    if kind == "list_value":
        return [_python(item) for item in value.list_value.values]
    if kind is None or kind == "null_value":
        return None
    return getattr(value, kind)


def _secret_values(value: Any, out: set[str], under_secret: bool = False) -> None:
    """Collect string values held under ``ISTIO_META_*`` keys anywhere in a Struct."""
    if isinstance(value, struct_pb2.Struct):
        for key, item in value.fields.items():
            _secret_values(item, out, under_secret or key.startswith(_SECRET_KEY_PREFIX))
    elif isinstance(value, struct_pb2.ListValue):
        for item in value.values:
            _secret_values(item, out, under_secret)
    elif isinstance(value, struct_pb2.Value):
        kind = value.WhichOneof("kind")
        if kind in ("struct_value", "list_value"):
            _secret_values(getattr(value, kind), out, under_secret)
        elif kind == "string_value" and under_secret and value.string_value:
            out.add(value.string_value)


def _redact(text: str, struct: struct_pb2.Struct) -> str:
    secrets: set[str] = set()
    _secret_values(struct, secrets)
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, "<redacted>")
    return text[:500]
