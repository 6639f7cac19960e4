"""A ledger writer process for the crash test: appends concurrently until killed.

Usage: crash_writer.py DATABASE_URL HUB_KEY_FILE RUN. Prints one JSON line per acknowledged
receipt, only after ``append`` returned, so every printed receipt was acknowledged.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from exchange.crypto.keys import load_signing_key
from exchange.ledger import EntryDraft, Ledger, LedgerConfig
from exchange.store.engines import open_engine
from exchange.v1 import ledger_pb2


async def main(url: str, key_file: str, run: str) -> None:
    engine = open_engine(url)
    ledger = Ledger(
        engine,
        load_signing_key(Path(key_file)),
        "exchange.test/ledger",
        LedgerConfig(checkpoint_every=50, checkpoint_interval_ms=20, max_batch=64),
    )
    await ledger.start()
    print(json.dumps({"started": ledger.size()}), flush=True)

    async def worker(w: int) -> None:
        i = 0
        while True:
            draft = EntryDraft(
                kind=ledger_pb2.CHECK,
                actor=f"dept-{w}",
                outcome=ledger_pb2.FAILED,  # the verifier checks only the opaque envelope hash
                request_id=f"{run}-{w}-{i}",
            )
            receipt = await ledger.append(draft, envelope=f"{run}-{w}-{i}".encode())
            sys.stdout.write(
                json.dumps(
                    {
                        "sequence": receipt.sequence,
                        "leaf_hash": receipt.leaf_hash.hex(),
                        "checkpoint": receipt.checkpoint,
                        "proof": [p.hex() for p in receipt.inclusion_proof],
                    }
                )
                + "\n"
            )
            sys.stdout.flush()
            i += 1

    await asyncio.gather(*(worker(w) for w in range(16)))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3]))
