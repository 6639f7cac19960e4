"""An entry's facts are one typed value gathered as the call goes: a refusal raised at any step
carries what was known by then, and nothing it says itself is overwritten."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from sqlalchemy import create_engine, text

from adapters.client import Refused
from exchange import errors
from exchange.errors import EntryFacts
from exchange.flows import lookups
from exchange.v1 import common_pb2, ledger_pb2
from tests.flows.world import (
    ANNA,
    ASSISTANCE,
    CIVIL,
    MARRIAGE,
    SOCIAL,
    World,
    grant_marital_status,
)
from tests.integration.test_flows import no_personal_data


def test_a_refusal_keeps_its_own_facts_and_takes_the_rest() -> None:
    known = EntryFacts(material_type="marriage-record", purpose="assistance", version=3)
    known.attributes.update(fields="marital_status", grant_id="g-1")
    refusal = errors.PermissionDenied(common_pb2.NO_GRANT, "no grant")
    refusal.facts.purpose = "its-own"
    refusal.facts.attributes["grant_id"] = "g-2"
    with pytest.raises(errors.PermissionDenied) as caught, lookups.facts(known):
        raise refusal
    said = caught.value.facts
    assert said.material_type == "marriage-record" and said.version == 3
    assert said.purpose == "its-own"  # what the refusal says itself stays
    assert said.attributes == {"fields": "marital_status", "grant_id": "g-2"}


def test_an_error_that_is_not_a_refusal_takes_no_facts() -> None:
    with pytest.raises(ValueError), lookups.facts(EntryFacts(material_type="x")):
        raise ValueError("a bug, not a refusal")


async def test_a_request_refused_after_the_holder_answered_records_all_it_learned(
    world: World, tmp_path: Path
) -> None:
    # The holder's record changed behind the hub's index: the holder answers, the hub refuses
    # CONTENT_MISMATCH, and the refusal's entry names the grant, the fields, the version asked
    # for, the holder and how long it took to answer (supervision reads that latency).
    await grant_marital_status(world)
    engine = create_engine(f"sqlite:///{tmp_path / 'civil' / 'civil.db'}")
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE marriages SET status = 'divorced' WHERE citizen_id = :id"), {"id": ANNA}
        )
    engine.dispose()

    with pytest.raises(Refused) as caught:
        await world.clients[SOCIAL].request(MARRIAGE, ANNA, purpose=ASSISTANCE)
    assert caught.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert caught.value.reason == "CONTENT_MISMATCH"

    assert world.spies[CIVIL].fetches == [(MARRIAGE, ANNA, ("marital_status",))]
    entry = world.last_entry()
    assert (entry.kind, entry.outcome) == (ledger_pb2.REQUEST, ledger_pb2.REFUSED)
    assert entry.reason == common_pb2.CONTENT_MISMATCH
    assert (entry.material_type, entry.purpose, entry.counterparty) == (MARRIAGE, ASSISTANCE, CIVIL)
    assert entry.version == 1 and entry.reference and len(entry.content_hash) == 32
    assert len(entry.subject_ref) == 32
    assert entry.attributes["fields"] == "marital_status"
    assert entry.attributes["grant_id"].startswith("g-")
    assert entry.attributes["sharing_class"] == "CONDITIONAL"
    assert float(entry.attributes["provider_latency_ms"]) >= 0
    assert entry.attributes["method"] == "/exchange.v1.Exchange/Request"
    no_personal_data(world)
