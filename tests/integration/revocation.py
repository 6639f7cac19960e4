"""A revocation race: members call in tight loops while a revocation is made, then the ledger
is checked. Shared by the one-hub (SQLite) and several-hub (PostgreSQL) tests.

What must hold, for every kind of revocation (grant, key, member state, sharing class):

- every call that was served has its entry before the revocation's entry in the chain;
- no call that started after the revoking call returned was served, on any hub;
- the ledger, exported, verifies.
"""

from __future__ import annotations

import asyncio
import enum
import io
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from sqlalchemy import Engine

from adapters.client import HubClient, Refused
from exchange.audit.verify import verify_export
from exchange.crypto.keys import SigningKey
from exchange.ledger import Ledger
from exchange.ledger.export import KeyRecord, export_ledger, first_keys
from exchange.v1 import catalog_pb2, exchange_pb2, grants_pb2, registry_pb2
from tests.conftest import HUB_ID
from tests.flows.world import ANNA, ASSISTANCE, MARRIAGE, SOCIAL, material_type

REQUEST = "/exchange.v1.Exchange/Request"


class Kind(enum.Enum):
    """What is revoked."""

    GRANT = "grant"
    KEY = "key"
    ROTATION = "rotation"  # a rotation without grace ends the old key at once
    STATE = "state"
    SHARING = "sharing"


# The refusal a call meets once each kind of revocation has taken effect: at authentication
# (a later call) or at its entry's commit (a call in flight).
EXPECTED = {
    Kind.GRANT: {"GRANT_REVOKED"},
    Kind.KEY: {"KEY_REVOKED"},
    Kind.ROTATION: {"KEY_EXPIRED"},
    Kind.STATE: {"DEPARTMENT_INACTIVE"},
    Kind.SHARING: {"MATERIAL_NOT_SHARED"},
}


@dataclass
class Outcomes:
    """What the racing callers saw."""

    served: list[tuple[float, int]] = field(default_factory=list)  # (started, entry sequence)
    refused: list[tuple[float, str, int | None]] = field(default_factory=list)


async def issue_grant(owner: HubClient, consumer: str = SOCIAL) -> grants_pb2.Grant:
    """A grant of marriage records (marital status) to ``consumer`` for social assistance."""
    answer = await owner.issue_grant(
        grant=grants_pb2.Grant(
            consumer=consumer,
            material_type=MARRIAGE,
            fields=["marital_status"],
            purposes=[ASSISTANCE],
        )
    )
    return answer.grant


async def revoke(
    kind: Kind, *, operator: HubClient, owner: HubClient, grant: grants_pb2.Grant, keyid: str
) -> int:
    """Make the revocation of ``kind``; return its entry's sequence."""
    if kind is Kind.GRANT:
        answer: object = await owner.revoke_grant(grant_id=grant.id)
    elif kind is Kind.KEY:
        answer = await operator.revoke_key(department_id=SOCIAL, keyid=keyid)
    elif kind is Kind.ROTATION:
        answer = await operator.rotate_key(
            department_id=SOCIAL, new_public_key=SigningKey.generate().public_bytes, grace_seconds=0
        )
    elif kind is Kind.STATE:
        answer = await operator.set_state(
            department_id=SOCIAL, state=registry_pb2.SUSPENDED, reason="race test"
        )
    else:
        S, D = catalog_pb2.STRING, catalog_pb2.DATE
        answer = await owner.publish_material_type(
            material_type=material_type(
                MARRIAGE,
                catalog_pb2.NOT_SHARED,
                [
                    ("marital_status", S, True),
                    ("spouse_name", S, False),
                    ("registered_on", D, False),
                ],
            )
        )
    return int(answer.receipt.sequence)  # type: ignore[attr-defined]


async def race(
    requesters: Sequence[HubClient],
    revocation: Callable[[], Awaitable[int]],
    *,
    in_flight: Callable[[], bool],
    after: int = 6,
) -> tuple[Outcomes, int, float]:
    """Call Request in a loop on every requester; once a call was served and ``in_flight()``
    says calls are waiting on the holder, make the revocation. Each loop stops after ``after``
    calls started once the revocation returned. Returns the outcomes, the revocation's
    sequence and the moment (monotonic) it returned."""
    outcomes = Outcomes()
    returned: list[float] = []
    body = exchange_pb2.MaterialRequest(
        material_type=MARRIAGE, subject_id=ANNA, purpose=ASSISTANCE, fields=["marital_status"]
    )

    async def loop(client: HubClient) -> None:
        late = 0
        deadline = time.monotonic() + 60
        while late < after and time.monotonic() < deadline:
            started = time.monotonic()
            try:
                answer = await client.call(REQUEST, body, exchange_pb2.MaterialResponse, timeout=20)
            except Refused as refused:
                outcomes.refused.append((started, refused.reason, refused.ledger_sequence))
            else:
                outcomes.served.append((started, answer.receipt.sequence))
            if returned and started > returned[0]:
                late += 1

    async def revoke_when_in_flight() -> int:
        while not (outcomes.served and in_flight()):
            await asyncio.sleep(0.005)
        sequence = await revocation()
        returned.append(time.monotonic())
        return sequence

    loops = [asyncio.create_task(loop(c)) for c in requesters]
    sequence = await revoke_when_in_flight()
    await asyncio.gather(*loops)
    return outcomes, sequence, returned[0]


def check(kind: Kind, outcomes: Outcomes, revocation: int, returned: float) -> None:
    """Assert the race's rules."""
    assert outcomes.served, "no call was served before the revocation"
    late_served = [s for s in outcomes.served if s[0] > returned]
    assert not late_served, (
        f"{len(late_served)} calls started after the revoke returned were served"
    )
    after_it = [seq for _, seq in outcomes.served if seq > revocation]
    assert not after_it, f"calls served with entries after the revocation's: {after_it}"
    late = [r for r in outcomes.refused if r[0] > returned]
    assert late and {r[1] for r in late} <= EXPECTED[kind], {r[1] for r in late}
    # Every refusal is an entry, and a refusal for this revocation comes after it.
    for _, reason, sequence in outcomes.refused:
        assert sequence is not None
        if reason in EXPECTED[kind]:
            assert sequence > revocation


def refused_at_commit(ledger: Ledger) -> list[int]:
    """Sequences of the entries a guard turned into refusals (attribute ``checked``)."""
    return [
        stored.sequence
        for stored in ledger.entries(0, ledger.size())
        if stored.decode().attributes.get("checked") == "at commit"
    ]


async def verify(engine: Engine, ledger: Ledger, keys: Sequence[KeyRecord]) -> None:
    """Wait for a checkpoint covering the whole log, export it and verify it."""
    deadline = time.monotonic() + 20
    while True:
        latest = ledger.latest_checkpoint()
        if latest is not None and latest.size == ledger.size():
            break
        assert time.monotonic() < deadline, "no checkpoint covers the log"
        await asyncio.sleep(0.1)
    out = io.StringIO()
    # The operator's first keys are pinned as an auditor pins them (docs/ledger.md).
    export_ledger(engine, out, keys, [ledger.verifier_key], operator_keys=first_keys(keys, HUB_ID))
    out.seek(0)
    report = verify_export(out, hub_keys=[ledger.verifier_key], workers=0)
    assert report.ok, report.first_failure
