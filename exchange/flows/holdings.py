"""PublishHoldings: the owner makes material it already holds known to the hub's index.

A department joining the exchange already holds material in its own database. Its adapter lists
those holdings and publishes them (``exchange adapter publish``); the hub validates each against
the material type's schema and keeps only keyed subject refs, keyed content and field hashes,
references and versions — never an id or a value. Per holding: nothing indexed yet -> STORED
(version 1); same content as the current version -> ALREADY_ON_FILE (nothing changes);
different content -> NEW_VERSION (the owner's own change supersedes the old). One ledger entry
per call; it names the subject only when the call carries exactly one holding.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from sqlalchemy.exc import IntegrityError

from exchange import errors
from exchange.catalog.schema import canonical_fields
from exchange.clock import now_us
from exchange.errors import EntryFacts
from exchange.flows import lookups
from exchange.flows.record import record, with_receipt
from exchange.membership import Role
from exchange.policy.identity import Caller
from exchange.store.materials import IndexedMaterial
from exchange.v1 import common_pb2, exchange_pb2, ledger_pb2

if TYPE_CHECKING:
    from exchange.hub import Hub

MAX_HOLDINGS = 1000


async def publish_holdings(
    hub: Hub, caller: Caller, body: exchange_pb2.PublishHoldingsRequest
) -> exchange_pb2.PublishHoldingsResponse:
    """Index the owner's holdings of one material type.

    Raises PermissionDenied (ROLE_REQUIRED, NOT_OWNER), NotFound (UNKNOWN_MATERIAL_TYPE),
    InvalidArgument (SCHEMA_VIOLATION naming the holding's position, too many holdings, a
    subject twice), Unavailable (INTERNAL_ERROR: a concurrent publish; retry).
    """
    single = len(body.holdings) == 1 and body.holdings[0].subject_id
    subject_ref = hub.content_keys.subject_ref(body.holdings[0].subject_id) if single else b""
    with lookups.facts(
        EntryFacts(
            material_type=body.material_type[:128],
            subject_ref=subject_ref,
            attributes={"publish": str(len(body.holdings))},
        )
    ):
        lookups.require_role(caller, Role.PROVIDER, what="PublishHoldings")
        material_type = await lookups.material_type(hub, body.material_type)
        if material_type.owner != caller.department_id:
            raise errors.PermissionDenied(
                common_pb2.NOT_OWNER,
                f"only {material_type.owner!r} publishes holdings of {material_type.id!r}",
            )
        if not 0 < len(body.holdings) <= MAX_HOLDINGS:
            raise errors.InvalidArgument(
                common_pb2.INVALID_ARGUMENT_FIELD,
                f"holdings must hold 1 to {MAX_HOLDINGS} materials per call",
            )
        prepared: list[tuple[bytes, str, dict[str, str]]] = []
        seen: set[bytes] = set()
        for position, holding in enumerate(body.holdings):
            lookups.require_text(holding.subject_id, f"holdings[{position}].subject_id", 128)
            subject_id = lookups.subject_id(
                holding.subject_id,
                material_type.subject_id_scheme,
                f"holdings[{position}].subject_id",
            )
            try:
                fields = canonical_fields(material_type, holding.fields, complete=True)
            except errors.InvalidArgument as exc:
                exc.message = f"holdings[{position}]: {exc.message}"
                raise
            ref = hub.content_keys.subject_ref(holding.subject_id)
            if ref in seen:
                raise errors.InvalidArgument(
                    common_pb2.INVALID_ARGUMENT_FIELD,
                    f"holdings[{position}] repeats a subject of this call",
                )
            seen.add(ref)
            prepared.append((ref, subject_id, fields))

        keys = hub.content_keys
        results: list[exchange_pb2.PublishedHolding] = []
        changes: list[tuple[IndexedMaterial, IndexedMaterial | None]] = []
        counts = {"STORED": 0, "ALREADY_ON_FILE": 0, "NEW_VERSION": 0}
        currents = await asyncio.to_thread(
            lambda: [hub.index.current(material_type.id, ref) for ref, _, _ in prepared]
        )
        for (ref, subject_id, fields), current in zip(prepared, currents, strict=True):
            content_hash = keys.content_hash(material_type.id, subject_id, fields)
            if current is not None and current.content_hash == content_hash:
                outcome, reference, version = (
                    exchange_pb2.ALREADY_ON_FILE,
                    current.reference,
                    current.version,
                )
            else:
                outcome = exchange_pb2.STORED if current is None else exchange_pb2.NEW_VERSION
                version = 1 if current is None else current.version + 1
                reference = keys.reference(material_type.id, ref, version)
                changes.append(
                    (
                        IndexedMaterial(
                            reference=reference,
                            material_type=material_type.id,
                            subject_ref=ref,
                            version=version,
                            content_hash=content_hash,
                            holder=material_type.owner,
                            submitted_by=caller.department_id,
                            field_hashes=keys.field_hashes(material_type.id, subject_id, fields),
                        ),
                        current,
                    )
                )
            counts[exchange_pb2.SubmitOutcome.Name(outcome)] += 1
            results.append(
                exchange_pb2.PublishedHolding(
                    outcome=outcome, reference=reference, version=version, content_hash=content_hash
                )
            )
        indexed = [(m, previous.reference if previous else None) for m, previous in changes]
        indexed_us = now_us()
        response = exchange_pb2.PublishHoldingsResponse(holdings=results)
        try:
            receipt = await record(
                hub.ledger,
                caller,
                ledger_pb2.SUBMIT,
                effect=lambda conn: hub.index.put_versions(conn, indexed, indexed_us),
                facts=EntryFacts(
                    subject_ref=subject_ref,
                    material_type=material_type.id,
                    content_hash=results[0].content_hash if single else b"",
                    reference=results[0].reference if single else "",
                    version=results[0].version if single else 0,
                    attributes={
                        "submit": "PUBLISHED",
                        "holdings": str(len(results)),
                        "stored": str(counts["STORED"]),
                        "unchanged": str(counts["ALREADY_ON_FILE"]),
                        "new_versions": str(counts["NEW_VERSION"]),
                    },
                ),
                answer=with_receipt(response),
            )
        except IntegrityError as exc:
            raise errors.Unavailable(
                common_pb2.INTERNAL_ERROR,
                "holdings of this type were published concurrently; publish again",
            ) from exc
    return with_receipt(response)(receipt)
