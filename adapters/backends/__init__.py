"""Backends: where a department's material already lives (SQL databases, CSV and JSON Lines files).

A backend reads one material for one subject (only the columns of the fields asked for), stores a
material where its mapping says, and lists its holdings for publishing to the hub. Its methods are
synchronous (database drivers and file I/O block); the adapter server calls them in worker
threads so that the event loop keeps serving.
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import unicodedata
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from adapters.errors import BackendError, MappingError
from adapters.settings import BackendKind, DepartmentSettings, MaterialMapping

__all__ = [
    "Backend",
    "BackendError",
    "Holding",
    "MappedBackend",
    "MappingError",
    "canonical_value",
    "open_backend",
]


@dataclass(frozen=True, slots=True)
class Holding:
    """One material as the backend holds it.

    ``fields`` holds the canonical string form of every non-null value asked for (a null is not a
    value: the field is absent). ``reference`` and ``version`` are set when the mapping names
    columns for them.
    """

    subject_id: str
    fields: Mapping[str, str]
    reference: str | None = None
    version: int | None = None


class Backend(Protocol):
    """What the adapter needs from a backend."""

    def validate(self) -> None:
        """Check every mapping against the real tables, columns or files.

        Raises MappingError naming the material type and what is missing, BackendError if the
        source cannot be reached at all.
        """

    def material_types(self) -> Sequence[str]:
        """The material types this backend maps."""

    def fields_of(self, material_type: str) -> Sequence[str]:
        """The field names mapped for ``material_type``. Raises KeyError if it is not mapped."""

    def store_fields(self, material_type: str) -> Sequence[str] | None:
        """The field names Store may write for ``material_type``, or None if it is not stored.

        Raises KeyError if it is not mapped.
        """

    def fetch(self, material_type: str, subject_id: str, fields: Sequence[str]) -> Holding | None:
        """Read ``fields`` of the subject's current material, or None if there is none.

        Only the columns of ``fields`` (and the reference and version columns) are read.
        Raises KeyError for an unmapped type or field, BackendError if the source fails.
        """

    def store(
        self,
        material_type: str,
        subject_id: str,
        fields: Mapping[str, str],
        *,
        reference: str,
        version: int,
        submitted_by: str,
        rehearse: bool = False,
    ) -> None:
        """Write a material where the mapping's store target says; with ``rehearse``, go as
        far as the source allows without keeping anything (a database writes and rolls back,
        so its types, constraints and triggers decide), for a pending Store.

        Raises KeyError for an unmapped field, BackendRefused if the source refused the values,
        BackendError if the type has no store target or the write fails.
        """

    def list_holdings(self, material_type: str) -> Iterator[Holding]:
        """Every subject's current material of ``material_type``, with every mapped field.

        Raises KeyError for an unmapped type, BackendError if it cannot be listed.
        """

    def close(self) -> None:
        """Release connections and file handles."""


class MappedBackend:
    """What every backend derives from its department's mapping alone."""

    def __init__(self, materials: Mapping[str, MaterialMapping]) -> None:
        self.materials = dict(materials)

    def material_types(self) -> Sequence[str]:
        return list(self.materials)

    def fields_of(self, material_type: str) -> Sequence[str]:
        return list(self.materials[material_type].fields)

    def store_fields(self, material_type: str) -> Sequence[str] | None:
        store = self.materials[material_type].store
        return list(store.fields) if store is not None else None


def canonical_value(value: object) -> str | None:
    """The canonical string form of a column value, or None for a null.

    Text in Unicode NFC; integers and decimals in decimal; floats by ``repr`` (shortest round trip);
    booleans ``true``/``false``; dates, times and datetimes in ISO 8601; bytes in base64.
    """
    if value is None:
        return None
    if isinstance(value, str):
        return unicodedata.normalize("NFC", value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | decimal.Decimal):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, dt.date | dt.time):  # datetime is a date
        return value.isoformat()
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    return str(value)


def open_backend(settings: DepartmentSettings) -> Backend:
    """Open the backend the settings name (not yet validated: call ``validate``)."""
    if settings.backend.kind is BackendKind.SQL:
        from adapters.backends.sql import SqlBackend

        return SqlBackend(settings.backend.url, settings.materials)
    from adapters.backends.files import FileBackend

    return FileBackend(settings.materials)
