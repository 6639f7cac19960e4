"""Field values in canonical form, and checking a material's fields against its type.

The canonical form of a value is what the content hash is taken over (docs/content-hash.md),
so the same content hashes the same whoever sent it:

- STRING: the text in Unicode NFC;
- INTEGER: decimal, optional '-', no leading zeros, no '+' ("-0" is "0");
- DATE: ISO 8601 calendar date ``YYYY-MM-DD``;
- BOOLEAN: ``true`` or ``false`` (input is case-insensitive).
"""

from __future__ import annotations

import datetime as dt
import re
import unicodedata
from collections.abc import Mapping

from exchange import errors
from exchange.catalog.model import FieldType, MaterialType
from exchange.v1 import common_pb2

IDENTIFIER = re.compile(r"^[a-z0-9](?:[a-z0-9._-]{0,126}[a-z0-9])?$")
FIELD_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_INTEGER = re.compile(r"^-?[0-9]{1,30}$")
_DATE = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")
MAX_VALUE_BYTES = 64 * 1024


def canonical_value(kind: FieldType, value: str) -> str:
    """``value`` in the canonical form of ``kind``.

    Raises ValueError if it is not a value of that type. The message names the expected form
    only, never the value: values are personal data and messages reach callers and logs.
    """
    if kind is FieldType.STRING:
        return unicodedata.normalize("NFC", value)
    if kind is FieldType.INTEGER:
        if not _INTEGER.match(value):
            raise ValueError("must be a decimal integer")
        return str(int(value))
    if kind is FieldType.DATE:
        if not _DATE.match(value):
            raise ValueError("must be a date in the form YYYY-MM-DD")
        try:
            return dt.date.fromisoformat(value).isoformat()
        except ValueError as exc:
            raise ValueError("must be a calendar date (YYYY-MM-DD)") from exc
    if kind is FieldType.BOOLEAN:
        lowered = value.lower()
        if lowered not in ("true", "false"):
            raise ValueError("must be true or false")
        return lowered
    raise ValueError(f"unknown field type {kind!r}")  # pragma: no cover - closed enum


def canonical_fields(
    material_type: MaterialType, fields: Mapping[str, str], *, complete: bool
) -> dict[str, str]:
    """The fields in canonical form, checked against the type's schema.

    An empty value is an absent field: it is left out of the result. With ``complete``, every
    required field must be present with a value (a whole material); otherwise the fields are a
    subset (a provider's answer naming only some fields). Raises
    errors.InvalidArgument (SCHEMA_VIOLATION) naming the first offending field.
    """
    result: dict[str, str] = {}
    for name, value in fields.items():
        spec = material_type.field(name)
        if spec is None:
            raise _violation(f"{material_type.id!r} has no field {name[:64]!r}")
        if value == "":
            # Absent means absent (docs/content-hash.md): an empty value is no value, so it
            # neither fills a required field nor changes the content hash.
            continue
        if len(value.encode("utf-8")) > MAX_VALUE_BYTES:
            raise _violation(f"field {name!r} is longer than {MAX_VALUE_BYTES} bytes")
        try:
            result[name] = canonical_value(spec.type, value)
        except ValueError as exc:
            raise _violation(f"field {name!r} ({spec.type.name}) {exc}") from exc
    if complete:
        missing = [f.name for f in material_type.fields if f.required and f.name not in result]
        if missing:
            raise _violation(f"required field(s) without a value: {', '.join(missing)}")
    return result


def _violation(message: str) -> errors.InvalidArgument:
    return errors.InvalidArgument(common_pb2.SCHEMA_VIOLATION, message)


def check_identifier(value: str, what: str) -> str:
    """Return ``value`` if it is a well-formed catalog id, else raise InvalidArgument."""
    if not IDENTIFIER.match(value):
        raise errors.InvalidArgument(
            common_pb2.INVALID_ARGUMENT_FIELD,
            f"{what} must be 1-128 lowercase letters, digits, '.', '_' or '-'",
        )
    return value


def check_field_name(value: str, what: str) -> str:
    """Return ``value`` if it is a well-formed field name, else raise InvalidArgument."""
    if not FIELD_NAME.match(value):
        raise errors.InvalidArgument(
            common_pb2.INVALID_ARGUMENT_FIELD,
            f"{what} {value[:64]!r} must be a lowercase letter then letters, digits or '_'",
        )
    return value
