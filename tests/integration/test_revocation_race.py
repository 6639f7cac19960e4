"""Revocations race with calls on one hub (SQLite): validity is judged in ledger order.

Calls wait on a slow holder while the revocation commits, so some are authenticated and
decided before it and reach the ledger after it: those must be refused as their entry is
appended (and nothing served), and the ledger must verify afterwards (a key revocation used to
leave entries signed by the revoked key after the revocation, which the verifier rejects).
"""

from __future__ import annotations

import pytest

from exchange.crypto.keys import keyid as keyid_of
from tests.flows.world import CIVIL, HUB_ID, SOCIAL, World
from tests.integration.revocation import (
    Kind,
    check,
    issue_grant,
    race,
    refused_at_commit,
    revoke,
    verify,
)


@pytest.mark.parametrize("kind", list(Kind), ids=lambda k: k.value)
async def test_revocation_race_on_one_hub(world: World, kind: Kind) -> None:
    hub = world.hub
    grant = await issue_grant(world.clients[CIVIL])
    spy = world.spies[CIVIL]
    spy.delay = 0.15  # calls are in flight at the holder when the revocation commits
    started = len(spy.fetches)
    requesters = [hub.client(SOCIAL) for _ in range(4)]
    keyid = keyid_of(hub.keystore.department_signing_key(SOCIAL).public_bytes)

    outcomes, revocation, returned = await race(
        requesters,
        lambda: revoke(
            kind,
            operator=hub.client(HUB_ID),
            owner=world.clients[CIVIL],
            grant=grant,
            keyid=keyid,
        ),
        in_flight=lambda: len(spy.fetches) >= started + 6,
    )
    spy.delay = 0.0
    check(kind, outcomes, revocation, returned)
    ledger = hub.server.hub.ledger
    # The calls in flight were decided before the revocation and refused at their commit.
    assert [s for s in refused_at_commit(ledger) if s > revocation]
    await verify(hub.server.hub.engine, ledger, hub.server.hub.key_history())
