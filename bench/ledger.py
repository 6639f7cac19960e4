"""Ledger benchmark: durable appends, full offline verification, proof time vs. log size.

Prints each figure beside a baseline measured in the same run on this machine:

- durable appends/s through ``Ledger.append`` (SQLite WAL, synchronous=FULL, many concurrent
  callers) vs. raw ``sqlite3`` inserts of rows of the same size with the same batching;
- full verification of an export (entries/s) vs. cores x bare Ed25519 verifications/s;
- inclusion and consistency proof time at 10k, 100k and 1M entries (node rows bulk-built).

Run: python bench/ledger.py [--appends N] [--skip-million] [--only verify]
(``--only verify``: one unmeasured run of appends to build the log, then the verification
figures alone.)
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import random
import resource
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import Engine

from exchange.audit.verify import Report, verify_export
from exchange.clock import now_us, to_timestamp
from exchange.crypto.envelope import sign
from exchange.crypto.keys import SigningKey, verify_signature
from exchange.ledger import EntryDraft, Ledger, LedgerConfig, merkle, sign_checkpoint
from exchange.ledger.export import KeyRecord, export_ledger
from exchange.store.engines import open_engine
from exchange.store.schema import upgrade
from exchange.v1 import common_pb2, exchange_pb2, ledger_pb2, registry_pb2

ORIGIN = "bench.exchange/ledger"
ACTOR = "js.nj.civil-affairs"
HUB_ID = "hub"


def _draft(i: int) -> EntryDraft:
    return EntryDraft(
        kind=ledger_pb2.REQUEST,
        actor=ACTOR,
        outcome=ledger_pb2.OK,
        subject_ref=random.randbytes(32),
        material_type="household-registration",
        content_hash=random.randbytes(32),
        purpose="social-assistance-eligibility",
        counterparty="js.nj.public-security",
        reference=f"mat-{i:012d}",
        version=1,
        request_id=f"req-{i:012d}",
        attributes={"provider_latency_ms": "12"},
    )


def _envelopes(dept: SigningKey, n: int) -> list[bytes]:
    """One signed request envelope per entry, as a department's calls carry them: a body with
    its header (request id, issue time, department), bound to its entry by the verifier."""
    envelopes = []
    for i in range(n):
        body = exchange_pb2.MaterialRequest(
            material_type="household-registration", purpose="social-assistance-eligibility"
        )
        body.header.request_id = f"req-{i:012d}"
        body.header.department_id = ACTOR
        body.header.issued_at.CopyFrom(to_timestamp(now_us()))
        body.header.disclosure_sha256 = random.randbytes(32)  # the subject travels beside it
        envelopes.append(
            sign(body.SerializeToString(), body.DESCRIPTOR.full_name, dept).SerializeToString()
        )
    return envelopes


def _registration(hub: SigningKey, dept: SigningKey) -> tuple[EntryDraft, bytes]:
    """The operator's registration of the department: the verifier learns its key from it."""
    body = registry_pb2.RegisterDepartmentRequest(
        department=registry_pb2.Department(
            id=ACTOR,
            name="Civil Affairs",
            roles=[common_pb2.CONSUMER],
            keys=[registry_pb2.DepartmentKey(public_key=dept.public_bytes)],
        )
    )
    body.header.request_id = "register"
    body.header.department_id = HUB_ID
    body.header.issued_at.CopyFrom(to_timestamp(now_us()))
    envelope = sign(body.SerializeToString(), body.DESCRIPTOR.full_name, hub)
    draft = EntryDraft(
        kind=ledger_pb2.DEPARTMENT_REGISTRATION,
        actor=HUB_ID,
        outcome=ledger_pb2.OK,
        counterparty=ACTOR,
        request_id="register",
        attributes={"keyid": dept.keyid},
    )
    return draft, envelope.SerializeToString()


async def _appends(
    engine_url: str, hub: SigningKey, dept: SigningKey, envelopes: list[bytes], n: int, callers: int
) -> tuple[Engine, Ledger, float, float, float]:
    engine = open_engine(engine_url)
    upgrade(engine)
    ledger = Ledger(engine, hub, ORIGIN, LedgerConfig())
    await ledger.start()
    drafts = [_draft(i) for i in range(n)]
    per = n // callers

    async def caller(c: int) -> None:
        for i in range(c * per, (c + 1) * per):
            await ledger.append(drafts[i], envelopes[i])

    # warm up (connection pool, first checkpoint) before timing: the operator's registration
    await ledger.append(*_registration(hub, dept))
    start = time.perf_counter()
    await asyncio.gather(*(caller(c) for c in range(callers)))
    elapsed = time.perf_counter() - start
    commits = ledger.commit_count - 1
    await ledger.close()
    sample = ledger.entries(1, 100)
    entry_size = statistics.mean(len(e.entry_bytes) for e in sample)
    return engine, ledger, per * callers / elapsed, per * callers / max(commits, 1), entry_size


def _raw_sqlite(path: Path, n: int, batch: int, entry_size: int, envelope_size: int) -> float:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute(
        "CREATE TABLE t (sequence INTEGER PRIMARY KEY, entry BLOB NOT NULL, envelope BLOB NOT NULL,"
        " leaf_hash BLOB NOT NULL, subject_ref BLOB)"
    )
    conn.execute("CREATE INDEX ix_t_subject ON t (subject_ref)")
    rows = [
        (
            i,
            random.randbytes(entry_size),
            random.randbytes(envelope_size),
            random.randbytes(32),
            random.randbytes(32),
        )
        for i in range(n)
    ]
    start = time.perf_counter()
    for i in range(0, n, batch):
        conn.execute("BEGIN")
        conn.executemany("INSERT INTO t VALUES (?, ?, ?, ?, ?)", rows[i : i + batch])
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - start
    conn.close()
    return n / elapsed


def _bare_verify_rate(seconds: float = 1.0) -> float:
    key = SigningKey.generate()
    message = b"x" * 200
    signature = key.sign(message)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for _ in range(500):
            verify_signature(key.public_bytes, signature, message)
        count += 500
    return count / (time.perf_counter() - start)


def _sign_rate(seconds: float = 1.0) -> float:
    key = SigningKey.generate()
    message = b"x" * 120
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for _ in range(500):
            key.sign(message)
        count += 500
    return count / (time.perf_counter() - start)


def _parallel_bare_verify_rate(cores: int, seconds: float = 1.0) -> float:
    """Bare Ed25519 verifications/s of ``cores`` processes at once: what the machine really
    delivers in parallel (vCPUs may share physical cores)."""
    with ProcessPoolExecutor(cores) as pool:
        return sum(pool.map(_bare_verify_rate, [seconds] * cores))


def _per_entry_costs(text: str, runs: int = 15) -> tuple[float, float]:
    """The per-entry cost, in seconds, of a verifier worker on one chunk of the export and of
    one bare Ed25519 check, each the minimum of ``runs`` (the least disturbed by a shared
    machine's other work): the part of full verification the bindings add to."""
    from exchange.audit import verify as verifier

    lines = text.splitlines(keepends=True)
    entries = [line for line in lines if line.startswith('{"type":"entry"')][: verifier.CHUNK]
    keys = [json.loads(line) for line in lines if line.startswith('{"type":"key"')]
    verifier._init_worker(verifier._keys_from(keys), verifier.default_audit())
    lines = "".join(entries)  # a chunk as a stream's text, its lines encoded and split
    chunk = min(_timed(lambda: verifier._check_chunk(0, lines)) for _ in range(runs))
    bare = min(1 / _bare_verify_rate(0.2) for _ in range(runs))
    return chunk / len(entries), bare


def _cpu_seconds() -> tuple[float, float]:
    """CPU seconds (user + system) used so far by this process and by its ended children (the
    verifier's pool, once shut down)."""
    own, children = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return own.ru_utime + own.ru_stime, children.ru_utime + children.ru_stime


def _bare_cpu_per_check(checks: int = 2000) -> float:
    """CPU seconds of one bare Ed25519 check, over ``checks`` of them."""
    key = SigningKey.generate()
    message = b"x" * 200
    signature = key.sign(message)
    start = time.process_time()
    for _ in range(checks):
        verify_signature(key.public_bytes, signature, message)
    return (time.process_time() - start) / checks


def _timed(work: Callable[[], object]) -> float:
    start = time.perf_counter()
    work()
    return time.perf_counter() - start


def _bulk_log(path: Path, size: int, hub: SigningKey) -> str:
    """A log of ``size`` synthetic entries with every node row, written directly."""
    url = f"sqlite:///{path}"
    engine = open_engine(url)
    upgrade(engine)
    engine.dispose()
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA synchronous=OFF")
    compact = merkle.CompactRange()
    step = 100_000
    prev = bytes(32)
    for lo in range(0, size, step):
        entries: list[tuple[int, bytes, bytes, bytes, None]] = []
        nodes: list[tuple[int, bytes]] = []
        for i in range(lo, min(size, lo + step)):
            data = i.to_bytes(8, "big") + prev[:8]
            leaf = merkle.leaf_hash(data)
            done: list[tuple[int, int, bytes]] = []
            compact.append(leaf, done)
            entries.append((i, data, b"", leaf, None))
            nodes.extend(((idx << 6) | level, h) for level, idx, h in done if level >= 4)
            prev = leaf
        conn.execute("BEGIN")
        conn.executemany("INSERT INTO ledger_entries VALUES (?, ?, ?, ?, ?)", entries)
        conn.executemany("INSERT INTO ledger_nodes VALUES (?, ?)", nodes)
        conn.execute("COMMIT")
    checkpoint = sign_checkpoint(ORIGIN, size, compact.root(), hub, ORIGIN)
    conn.execute("UPDATE ledger_head SET size = ?, last_leaf_hash = ? WHERE id = 1", (size, prev))
    conn.execute(
        "INSERT INTO ledger_checkpoints VALUES (?, ?, ?)", (size, compact.root(), checkpoint.note)
    )
    conn.close()
    return url


def _proof_times(url: str, size: int, hub: SigningKey, trials: int = 300) -> tuple[float, float]:
    engine = open_engine(url)
    ledger = Ledger(engine, hub, ORIGIN)
    rng = random.Random(size)
    ledger.inclusion_proof(0, size)  # warm the pool
    start = time.perf_counter()
    for _ in range(trials):
        ledger.inclusion_proof(rng.randrange(size), size)
    inclusion = (time.perf_counter() - start) / trials
    start = time.perf_counter()
    for _ in range(trials):
        ledger.consistency_proof(rng.randrange(1, size), size)
    consistency = (time.perf_counter() - start) / trials
    engine.dispose()
    return inclusion, consistency


def _witness_round_trips(ledger: Ledger, engine: Engine, tmpdir: Path) -> None:
    """The witness round trip per checkpoint: each stored checkpoint of the log submitted in
    turn (add-checkpoint over HTTP on loopback, with its consistency proof) to a witness with
    durable state, against a bare HTTP POST round trip to the same server."""
    from exchange.ledger import storage
    from exchange.witness.cosignature import WitnessKey
    from exchange.witness.server import Witness, WitnessServer
    from exchange.witness.submitter import WitnessClient, WitnessEndpoint, post

    key = SigningKey.generate()
    server = WitnessServer(
        Witness(key, "bench/witness", [ledger.verifier_key], tmpdir / "witness.db")
    )
    server.start()
    try:
        with engine.connect() as conn:
            checkpoints = storage.checkpoints(conn, ledger.size())
        client = WitnessClient(
            WitnessEndpoint(server.url, WitnessKey.of("bench/witness", key.public_bytes))
        )
        times = []
        for checkpoint in checkpoints:
            start = time.perf_counter()
            client.submit(checkpoint, ledger.consistency_proof)
            times.append(time.perf_counter() - start)
        bare = []
        for _ in range(len(checkpoints)):
            start = time.perf_counter()
            post(f"{server.url}/nothing", b"")
            bare.append(time.perf_counter() - start)
    finally:
        server.stop()
    print(
        f"witness round trip per checkpoint: {statistics.median(times) * 1000:.2f} ms median "
        f"(p90 {sorted(times)[int(len(times) * 0.9)] * 1000:.2f} ms) over {len(times)} "
        "checkpoints: add-checkpoint with its consistency proof, signature checks, durable "
        "state (SQLite FULL), cosignature"
    )
    print(
        f"  baseline bare HTTP POST round trip to the same server: "
        f"{statistics.median(bare) * 1000:.2f} ms; ratio "
        f"{statistics.median(times) / statistics.median(bare):.1f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--appends", type=int, default=40_000)
    parser.add_argument("--callers", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--skip-million", action="store_true")
    parser.add_argument("--only", choices=["verify"], help="measure only full verification")
    args = parser.parse_args()
    only_verify = args.only == "verify"
    cores = os.cpu_count() or 1
    hub = SigningKey.generate()
    dept = SigningKey.generate()
    envelopes = _envelopes(dept, args.appends)
    envelope = envelopes[0]
    print(f"machine: {cores} cores; envelope {len(envelope)} bytes")

    with tempfile.TemporaryDirectory() as tmp:
        tmpdir = Path(tmp)
        # Disk and CPU of a shared machine are noisy: each figure is measured in `--repeat`
        # interleaved (subject, baseline) pairs and the median pair ratio is reported.
        ratios, rates, raws = [], [], []
        runs = 1 if only_verify else args.repeat
        for rep in range(runs):
            engine, ledger, rate, batch, entry_size = asyncio.run(
                _appends(
                    f"sqlite:///{tmpdir / f'ledger-{rep}.db'}",
                    hub,
                    dept,
                    envelopes,
                    args.appends,
                    args.callers,
                )
            )
            raw = _raw_sqlite(
                tmpdir / f"raw-{rep}.db",
                args.appends,
                max(1, round(batch)),
                round(entry_size),
                len(envelope),
            )
            rates.append(rate)
            raws.append(raw)
            ratios.append(rate / raw)
            if rep < runs - 1:
                engine.dispose()
        if not only_verify:
            _print_appends(args, rates, raws, ratios, batch, entry_size, len(envelope))
        out = io.StringIO()
        since = datetime(2020, 1, 1, tzinfo=UTC)
        history = [
            KeyRecord(HUB_ID, hub.keyid, hub.public_bytes, since),
            KeyRecord(ACTOR, dept.keyid, dept.public_bytes, since),
        ]
        summary = export_ledger(engine, out, history, [ledger.verifier_key])
        if not only_verify:
            _witness_round_trips(ledger, engine, tmpdir)
        engine.dispose()
        text = out.getvalue()
        # verified as `exchange audit verify FILE` does: from the file, which its workers read
        export = tmpdir / "export.jsonl"
        export.write_text(text, encoding="utf-8")
        vrates, singles, parallels, cpus = [], [], [], []
        for _ in range(args.repeat):
            before = _cpu_seconds()
            start = time.perf_counter()
            with export.open(encoding="utf-8") as handle:
                report = verify_export(handle, hub_keys=[ledger.verifier_key])
            elapsed = time.perf_counter() - start
            after = _cpu_seconds()
            assert report.ok, report.first_failure
            vrates.append(summary.entries / elapsed)
            cpus.append(
                tuple((b - a) / summary.entries for a, b in zip(before, after, strict=True))
            )
            singles.append(_bare_verify_rate())
            parallels.append(_parallel_bare_verify_rate(cores))
        _print_verification(args, cores, summary.entries, report, vrates, singles, parallels, cpus)
        worker, bare_one = _per_entry_costs(text)
        print(
            f"  per entry, min of 15 (steadier than the rates on a shared machine): a worker "
            f"{worker * 1e6:.1f} us, of which one bare Ed25519 check {bare_one * 1e6:.1f} us "
            f"({bare_one / worker:.2f})"
        )
        if not only_verify:
            _proofs(args, tmpdir, hub)


def _print_appends(
    args: argparse.Namespace,
    rates: list[float],
    raws: list[float],
    ratios: list[float],
    batch: float,
    entry_size: float,
    envelope_size: int,
) -> None:
    print(
        f"appends (durable, SQLite WAL+FULL, {args.callers} callers): "
        f"{statistics.median(rates):,.0f} entries/s median of "
        f"{', '.join(f'{r:,.0f}' for r in rates)}; avg batch {batch:.0f}, "
        f"entry {entry_size:.0f} B + envelope {envelope_size} B"
    )
    print(
        "  baseline raw sqlite3 insert, same row size and batching: "
        f"{statistics.median(raws):,.0f} rows/s median of "
        f"{', '.join(f'{r:,.0f}' for r in raws)}"
    )
    print(
        f"  ratio (median of pairs): {statistics.median(ratios):.2f} "
        f"[{', '.join(f'{r:.2f}' for r in ratios)}]  (target >= 0.25; >= 20,000/s)"
    )
    signs = _sign_rate()
    appended = statistics.median(rates)
    print(
        f"receipts: one Ed25519 signature per entry would cost {appended / signs:.2f} core "
        f"at {appended:,.0f} entries/s (sign {signs:,.0f}/s per core); one per batch costs "
        f"{appended / batch / signs:.4f} core"
    )


def _print_verification(
    args: argparse.Namespace,
    cores: int,
    entries: int,
    report: Report,
    vrates: list[float],
    singles: list[float],
    parallels: list[float],
    cpus: list[tuple[float, ...]],
) -> None:
    vrate = statistics.median(vrates)
    bare = statistics.median(singles)
    parallel = statistics.median(parallels)
    print(
        f"full verification: {vrate:,.0f} entries/s median of "
        f"{', '.join(f'{r:,.0f}' for r in vrates)} ({entries} entries, "
        f"{report.signatures} signatures, {report.checkpoints} checkpoints, {cores} workers)"
    )
    print(
        f"  baseline bare Ed25519 verify: {bare:,.0f}/s per core x {cores} = {bare * cores:,.0f}/s"
    )
    print(f"  ratio: {vrate / (bare * cores):.2f}  (target >= 0.8)")
    print(
        f"  bare Ed25519 verify in {cores} processes at once: {parallel:,.0f}/s "
        f"({parallel / (bare * cores):.2f} of cores x single); ratio to it: "
        f"{vrate / parallel:.2f}"
    )
    parent_cpu, workers_cpu = min(cpus, key=sum)
    bare_cpu = min(_bare_cpu_per_check() for _ in range(15))
    print(
        f"  CPU per entry, least of {args.repeat} (a loaded machine stretches wall time, "
        f"much less CPU time): {(parent_cpu + workers_cpu) * 1e6:.1f} us (parent "
        f"{parent_cpu * 1e6:.1f} + workers {workers_cpu * 1e6:.1f}) against one bare "
        f"Ed25519 check's {bare_cpu * 1e6:.1f} us, least of 15: ratio "
        f"{bare_cpu / (parent_cpu + workers_cpu):.2f}  (what cores x bare would give with "
        "the cores to itself)"
    )


def _proofs(args: argparse.Namespace, tmpdir: Path, hub: SigningKey) -> None:
    sizes = [10_000, 100_000] + ([] if args.skip_million else [1_000_000])
    results = {}
    for size in sizes:
        start = time.perf_counter()
        url = _bulk_log(tmpdir / f"proofs-{size}.db", size, hub)
        built = time.perf_counter() - start
        inclusion, consistency = _proof_times(url, size, hub)
        results[size] = (inclusion, consistency)
        print(
            f"proofs at {size:>9,} entries: inclusion {inclusion * 1e6:7.0f} us, "
            f"consistency {consistency * 1e6:7.0f} us  (log built in {built:.0f} s)"
        )
    base = results[sizes[0]]
    for size in sizes[1:]:
        inc, con = results[size]
        print(
            f"  ratio {size:,} / {sizes[0]:,}: inclusion {inc / base[0]:.2f}, "
            f"consistency {con / base[1]:.2f}  (target <= 2)"
        )


if __name__ == "__main__":
    main()
