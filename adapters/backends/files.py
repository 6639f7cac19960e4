"""The files backend: material in CSV files (a header row) or JSON Lines (one object a line).

Files are append-only from the adapter's side: Store appends a row, and a read takes the
subject's last row (or its highest version, when the mapping names a version column), so the
history a department's export tools wrote stays untouched. A read scans the file; that is fine
for the file sizes this backend is meant for (a township's export), and a department with more
material should put it in a database and use the SQL backend.
"""

from __future__ import annotations

import csv
import json
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from adapters.backends import Holding, MappedBackend, canonical_value
from adapters.errors import BackendError, MappingError
from adapters.settings import FILE_SUFFIXES, MaterialMapping, StoreTarget

_SAMPLE_ROWS = 100


def _format(path: Path) -> str:
    return FILE_SUFFIXES[path.suffix.lower()]


def _rows(path: Path) -> Iterator[Mapping[str, Any]]:
    """Every row of a CSV or JSON Lines file, as column -> value (CSV empty cells are null)."""
    try:
        with path.open(encoding="utf-8", newline="") as handle:
            if _format(path) == "csv":
                for row in csv.DictReader(handle):
                    yield {key: (value if value != "" else None) for key, value in row.items()}
            else:
                for number, line in enumerate(handle, start=1):
                    if not line.strip():
                        continue
                    try:
                        record = json.loads(line)
                    except json.JSONDecodeError as exc:
                        raise BackendError(f"{path.name} line {number} is not JSON") from exc
                    if not isinstance(record, dict):
                        raise BackendError(f"{path.name} line {number} is not a JSON object")
                    yield record
    except OSError as exc:
        raise BackendError(f"cannot read {path.name}: {exc.strerror}") from exc


def _columns(path: Path) -> set[str]:
    """The columns a file has: the CSV header, or the keys of the first JSON Lines records."""
    if _format(path) == "csv":
        with path.open(encoding="utf-8", newline="") as handle:
            header = next(csv.reader(handle), [])
        return set(header)
    seen: set[str] = set()
    for count, row in enumerate(_rows(path)):
        if count >= _SAMPLE_ROWS:
            break
        seen.update(row)
    return seen


class FileBackend(MappedBackend):
    """Material in CSV and JSON Lines files. Construct, ``validate()``, then serve."""

    def __init__(self, materials: Mapping[str, MaterialMapping]) -> None:
        super().__init__(materials)
        # One lock per file: appends from concurrent Store calls must not interleave.
        self._locks: dict[Path, threading.Lock] = {}

    def validate(self) -> None:
        """Check every mapped file exists and has the mapped columns; see ``Backend.validate``."""
        for mapping in self.materials.values():
            where = f"[materials.{mapping.material_type}]"
            assert mapping.file is not None  # settings require a file for this backend
            if not mapping.file.is_file():
                raise MappingError(f"{where}: file {mapping.file} does not exist")
            needed = {"subject_column": mapping.subject_column}
            needed.update({f"field {name!r}": col for name, col in mapping.fields.items()})
            for role in ("reference_column", "version_column"):
                if getattr(mapping, role):
                    needed[role] = getattr(mapping, role)
            self._check(where, mapping.file, needed)
            store = mapping.store
            if store is not None and store.file is not None:
                self._locks.setdefault(store.file.resolve(), threading.Lock())
                if store.file.is_file() and _format(store.file) == "csv":
                    stored = {"subject_column": store.subject_column}
                    stored.update({f"field {n!r}": c for n, c in store.fields.items()})
                    for role in ("reference_column", "version_column", "submitted_by_column"):
                        if getattr(store, role):
                            stored[role] = getattr(store, role)
                    self._check(f"{where}.store", store.file, stored)

    @staticmethod
    def _check(where: str, path: Path, needed: Mapping[str, str]) -> None:
        columns = _columns(path)
        if not columns and _format(path) == "jsonl":
            return  # an empty JSON Lines file has no schema to check yet
        missing = {what: column for what, column in needed.items() if column not in columns}
        if missing:
            listed = ", ".join(f"{column!r} ({what})" for what, column in missing.items())
            raise MappingError(
                f"{where}: file {path.name} has no column {listed}; it has "
                f"{', '.join(sorted(columns)) or 'no columns'}"
            )

    def _current(self, mapping: MaterialMapping, subject_id: str | None) -> Iterator[Holding]:
        """Scan the file: the current row per subject (or only ``subject_id``'s)."""
        assert mapping.file is not None
        latest: dict[str, tuple[int, Mapping[str, Any]]] = {}
        for position, row in enumerate(_rows(mapping.file)):
            subject = canonical_value(row.get(mapping.subject_column))
            if subject is None or (subject_id is not None and subject != subject_id):
                continue
            rank = position
            if mapping.version_column:
                version = canonical_value(row.get(mapping.version_column))
                rank = int(version) if version is not None and version.isdigit() else -1
            held = latest.get(subject)
            if held is None or rank >= held[0]:
                latest[subject] = (rank, row)
        for subject, (_rank, row) in latest.items():
            reference = (
                canonical_value(row.get(mapping.reference_column))
                if mapping.reference_column
                else None
            )
            version_text = (
                canonical_value(row.get(mapping.version_column)) if mapping.version_column else None
            )
            values = {name: canonical_value(row.get(col)) for name, col in mapping.fields.items()}
            yield Holding(
                subject_id=subject,
                fields={name: value for name, value in values.items() if value is not None},
                reference=reference,
                version=int(version_text) if version_text and version_text.isdigit() else None,
            )

    def fetch(self, material_type: str, subject_id: str, fields: Sequence[str]) -> Holding | None:
        mapping = self.materials[material_type]
        for name in fields:
            mapping.fields[name]
        for holding in self._current(mapping, subject_id):
            wanted = {name: holding.fields[name] for name in fields if name in holding.fields}
            return Holding(holding.subject_id, wanted, holding.reference, holding.version)
        return None

    def list_holdings(self, material_type: str) -> Iterator[Holding]:
        return self._current(self.materials[material_type], None)

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
        target: StoreTarget | None = self.materials[material_type].store
        if target is None or target.file is None:
            raise BackendError(f"[materials.{material_type}] has no store target")
        row: dict[str, str] = {target.subject_column: subject_id}
        for name, value in fields.items():
            row[target.fields[name]] = value  # KeyError: unmapped field
        for column, value in (
            (target.reference_column, reference),
            (target.version_column, str(version)),
            (target.submitted_by_column, submitted_by),
        ):
            if column:
                row[column] = value
        path = target.file
        lock = self._locks.setdefault(path.resolve(), threading.Lock())
        try:
            with lock:
                if _format(path) == "jsonl":
                    if rehearse:  # a line is always accepted
                        return
                    with path.open("a", encoding="utf-8") as handle:
                        handle.write(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n")
                    return
                header: list[str] = []
                if path.is_file():
                    with path.open(encoding="utf-8", newline="") as handle:
                        header = next(csv.reader(handle), [])
                if header:
                    unknown = set(row) - set(header)
                    if unknown:
                        raise BackendError(
                            f"{path.name} has no column {', '.join(sorted(unknown))}"
                        )
                new_file = not header
                if rehearse:  # the columns fit: the row would be appended
                    return
                with path.open("a", encoding="utf-8", newline="") as handle:
                    writer = csv.DictWriter(handle, fieldnames=header or list(row))
                    if new_file:
                        writer.writeheader()
                    writer.writerow(row)
        except OSError as exc:
            raise BackendError(f"cannot append to {path.name}: {exc.strerror}") from exc

    def close(self) -> None:
        """Nothing is held open between calls."""
