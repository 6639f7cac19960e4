"""Head-lock benchmark: how long the ledger's head lock is held per batch, and the chain's
ceiling in entries per second that this implies (docs/operations.md, "Several hubs").

Many concurrent appends of realistic entries (a member's Request: envelope of ~300 bytes),
each with the guard every OK entry of a member carries (``exchange.flows.validity``: its key
and member state, the material type's sharing class and its grant, read in the append's
transaction), committed by the ledger writer in batches of up to ``--batch`` entries. Printed:
entries per batch, the lock's hold time per batch and per entry (from the head's read to the
commit, the wait for the lock not counted), of which guards, and the ceiling = entries / hold
time, the rate at which one database could sequence entries with the lock always held.
The same run without guards is the baseline (the guards' cost is the difference).

Run: python bench/head_lock.py [--entries 20000] [--callers 2000] [--batch 1000]
     [--database-url postgresql+psycopg://…]   (default: a SQLite file)
Target: a ceiling of at least 20,000 entries per second on PostgreSQL.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import tempfile
import time
from pathlib import Path

from sqlalchemy import insert

from exchange.crypto.keys import SigningKey
from exchange.flows.validity import Share, guard
from exchange.ledger import EntryDraft, Ledger, LedgerConfig, LockStats
from exchange.policy.identity import Caller
from exchange.store.engines import open_engine
from exchange.store.exchange_tables import grants, material_types
from exchange.store.schema import upgrade
from exchange.store.tables import department_keys, departments
from exchange.v1 import ledger_pb2
from tests.postgres import scratch_postgres

CONSUMER = "js.nj.social-security"
MATERIAL = "marriage-record"
GRANT = "grant-1"


def _members(engine: object, key: SigningKey) -> None:
    """The rows the guards read: the consumer and its key, the material type and a grant."""
    with engine.begin() as conn:  # type: ignore[attr-defined]
        conn.execute(
            insert(departments).values(
                id=CONSUMER, name=CONSUMER, roles="CONSUMER", state="ACTIVE", registered_us=0
            )
        )
        conn.execute(
            insert(department_keys).values(
                keyid=key.keyid,
                department_id=CONSUMER,
                public_key=key.public_bytes,
                valid_from_us=0,
            )
        )
        conn.execute(
            insert(material_types).values(
                id=MATERIAL,
                version=1,
                owner="js.nj.civil-affairs",
                name=MATERIAL,
                fields="[]",
                sharing_class="CONDITIONAL",
                retention_days=0,
                published_us=0,
            )
        )
        conn.execute(
            insert(grants).values(
                id=GRANT,
                owner="js.nj.civil-affairs",
                consumer=CONSUMER,
                material_type=MATERIAL,
                fields="marital_status",
                purposes="social-assistance",
                valid_from_us=0,
                valid_until_us=None,
                rate_per_minute=0,
                revoked_us=None,
                issued_us=0,
            )
        )


async def _run(url: str, entries: int, callers: int, batch: int, guarded: bool) -> LockStats:
    engine = open_engine(url)
    upgrade(engine)
    key = SigningKey.generate()
    _members(engine, key)
    ledger = Ledger(engine, SigningKey.generate(), "bench.local/hub", LedgerConfig(max_batch=batch))
    await ledger.start()
    envelope = os.urandom(300)
    caller = Caller(CONSUMER, frozenset({"CONSUMER"}), False, key.keyid, "r", 0, envelope, b"")
    check = guard(caller, [Share(MATERIAL, GRANT)]) if guarded else None
    per = entries // callers

    async def one(c: int) -> None:
        for i in range(per):
            draft = EntryDraft(
                kind=ledger_pb2.REQUEST,
                actor=CONSUMER,
                outcome=ledger_pb2.OK,
                request_id=f"{c}-{i}",
                material_type=MATERIAL,
                subject_ref=os.urandom(32),
                content_hash=os.urandom(32),
                purpose="social-assistance",
                counterparty="js.nj.civil-affairs",
                attributes={"grant_id": GRANT},
            )
            await ledger.append(draft, envelope, guard=check)

    await asyncio.gather(*(one(c) for c in range(callers)))
    stats = ledger.lock_stats
    await ledger.close()
    engine.dispose()
    return stats


def _line(what: str, stats: LockStats) -> None:
    per_batch = stats.entries / max(stats.batches, 1)
    print(
        f"  {what:14}: {stats.batches} batches of {per_batch:.0f} entries; held "
        f"{stats.per_batch_ms:.2f} ms per batch ({stats.seconds / stats.entries * 1e6:.1f} us "
        f"per entry), of which guards {stats.guards / max(stats.batches, 1) * 1000:.3f} ms; "
        f"ceiling {stats.ceiling:,.0f} entries/s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--entries", type=int, default=20_000)
    parser.add_argument("--callers", type=int, default=2_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--database-url", default=None)
    args = parser.parse_args()
    with contextlib.ExitStack() as scope:
        tmp = scope.enter_context(tempfile.TemporaryDirectory())
        print(
            f"{args.entries} appends from {args.callers} concurrent callers, batches of at most "
            f"{args.batch}; database "
            f"{'SQLite' if not args.database_url else args.database_url.split('://')[0]}"
        )
        for round_number in range(2):  # interleaved: without, with, without, with
            for guarded in (False, True):
                if args.database_url:
                    url = scope.enter_context(scratch_postgres(args.database_url, "bench_lock"))
                else:
                    url = f"sqlite:///{Path(tmp) / f'lock-{round_number}-{guarded}.db'}"
                started = time.perf_counter()
                stats = asyncio.run(_run(url, args.entries, args.callers, args.batch, guarded))
                elapsed = time.perf_counter() - started
                _line("with guards" if guarded else "without guards", stats)
                print(f"  {'':14}  ({args.entries / elapsed:,.0f} appends/s end to end)")


if __name__ == "__main__":
    main()
