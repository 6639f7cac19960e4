"""Strict payloads: every value of a decoded request is one the contract defines, before use.

Protobuf decoding is lenient on purpose (a newer sender's fields survive as unknown fields; an
enum keeps a number it does not know; integers and timestamps take any value of their wire type).
A signed payload that the hub stores beside its ledger entry must not carry anything the hub did
not check, and a value the flows cannot hold must be refused at the edge, naming the field, not
deep inside a database driver. So every decoded request is walked once:

- an unknown field anywhere (the envelope, the payload, a nested message, the disclosure) is
  ``INVALID_ARGUMENT UNKNOWN_FIELD``;
- an enum number the contract does not define, an unsigned integer beyond the signed range of its
  width (databases store signed integers), a timestamp outside 0001-01-01..9999-12-31 or with
  nanos outside 0..999 999 999, and text holding a NUL character (PostgreSQL's text cannot) are
  ``INVALID_ARGUMENT INVALID_ARGUMENT_FIELD`` naming the field's path.
"""

from __future__ import annotations

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.unknown_fields import UnknownFieldSet

from exchange import errors
from exchange.v1 import common_pb2

TIMESTAMP = "google.protobuf.Timestamp"
# 0001-01-01T00:00:00Z and 9999-12-31T23:59:59Z, the range RFC 3339 (and protobuf's JSON
# mapping) can write; every time in it is also an int64 count of microseconds.
MIN_SECONDS = -62_135_596_800
MAX_SECONDS = 253_402_300_799
_SIGNED_LIMIT = {
    FieldDescriptor.TYPE_UINT32: 2**31 - 1,
    FieldDescriptor.TYPE_FIXED32: 2**31 - 1,
    FieldDescriptor.TYPE_UINT64: 2**63 - 1,
    FieldDescriptor.TYPE_FIXED64: 2**63 - 1,
}


def _invalid(path: str, what: str) -> errors.InvalidArgument:
    return errors.InvalidArgument(common_pb2.INVALID_ARGUMENT_FIELD, f"{path} {what}")


def check_message(message: Message, path: str = "") -> None:
    """Refuse ``message`` if it, or any message inside it, holds a value the contract does not
    define (see the module docstring).

    Raises errors.InvalidArgument with UNKNOWN_FIELD or INVALID_ARGUMENT_FIELD; the message names
    the field's path (``grant.valid_until``), never its value.
    """
    where = path or message.DESCRIPTOR.full_name
    unknown = UnknownFieldSet(message)
    if len(unknown):
        numbers = sorted({unknown[i].field_number for i in range(len(unknown))})
        raise errors.InvalidArgument(
            common_pb2.UNKNOWN_FIELD,
            f"{where} carries field number(s) {', '.join(map(str, numbers[:8]))} that "
            f"{message.DESCRIPTOR.full_name} does not define",
        )
    if message.DESCRIPTOR.full_name == TIMESTAMP:
        seconds, nanos = message.seconds, message.nanos  # type: ignore[attr-defined]
        if not MIN_SECONDS <= seconds <= MAX_SECONDS or not 0 <= nanos < 1_000_000_000:
            raise _invalid(where, "must be a time between 0001-01-01 and 9999-12-31 UTC")
        return
    for field, value in message.ListFields():
        name = f"{path}.{field.name}" if path else field.name
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            value_field = field.message_type.fields_by_name["value"]
            for key, item in value.items():
                _check_scalar(field.message_type.fields_by_name["key"], key, f"{name} key")
                entry = f"{name}[{str(key)[:32]!r}]"
                if value_field.type == FieldDescriptor.TYPE_MESSAGE:
                    check_message(item, entry)
                else:
                    _check_scalar(value_field, item, entry)
        elif field.is_repeated:
            for index, item in enumerate(value):
                if field.type == FieldDescriptor.TYPE_MESSAGE:
                    check_message(item, f"{name}[{index}]")
                else:
                    _check_scalar(field, item, f"{name}[{index}]")
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            check_message(value, name)
        else:
            _check_scalar(field, value, name)


def _check_scalar(field: FieldDescriptor, value: object, path: str) -> None:
    if field.type == FieldDescriptor.TYPE_ENUM:
        enum = field.enum_type
        assert isinstance(value, int) and enum is not None
        if enum.values_by_number.get(value) is None:
            raise _invalid(path, f"is not a value of {enum.full_name}")
    elif field.type in _SIGNED_LIMIT:
        assert isinstance(value, int)
        if value > _SIGNED_LIMIT[field.type]:
            raise _invalid(path, f"must be at most {_SIGNED_LIMIT[field.type]}")
    elif field.type == FieldDescriptor.TYPE_STRING:
        assert isinstance(value, str)
        if "\x00" in value:
            raise _invalid(path, "must not contain NUL characters")
