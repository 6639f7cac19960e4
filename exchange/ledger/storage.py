"""The ledger's tables and the SQL operations on them (SQLite and PostgreSQL, one schema).

Four tables:

- ``ledger_head``: one row (id 1) holding the log size and the last leaf hash, with the
  tree's right edge and the last entry's time at that size. Every append transaction locks it
  first (``SELECT … FOR UPDATE`` on PostgreSQL, ``BEGIN IMMEDIATE`` on SQLite) and re-reads
  it, so several hub processes on one database still build exactly one chain.
- ``ledger_entries``: entry bytes exactly as hashed, the caller's envelope bytes and the leaf
  hash, by sequence number; ``subject_ref`` is indexed for access histories.
- ``ledger_nodes``: the hash of every complete aligned subtree of level >= 4 (16 leaves or
  more), keyed by one integer ``node_id = index * 64 + level`` (a single-column primary key, so
  a proof's nodes are one ``IN`` lookup on it). A subtree of level 1 to 3 is recomputed from its
  at most 8 leaves instead: storing them would add 7 rows per 8 entries to every append, the
  largest single cost of the writer. Any proof range decomposes into O(log n) complete subtrees,
  so a proof at any size reads O(log n) rows (at most 15 leaves more than with every level).
- ``ledger_checkpoints``: stored signed checkpoints by size.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Engine,
    Integer,
    LargeBinary,
    Table,
    Text,
    bindparam,
    insert,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError

from exchange.ledger import merkle
from exchange.ledger.checkpoint import Checkpoint
from exchange.ledger.entry import ZERO_HASH, StoredEntry
from exchange.store.metadata import metadata

HEAD_ID = 1

# On SQLite only an INTEGER PRIMARY KEY is the table's rowid; a BIGINT key would add a second
# b-tree (and a second insert) per row. SQLite integers are 64-bit either way.
Key = BigInteger().with_variant(Integer(), "sqlite")

ledger_head = Table(
    "ledger_head",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("size", BigInteger, nullable=False),
    Column("last_leaf_hash", LargeBinary, nullable=False),
    # The tree's right edge (the size it is for, 8 bytes big-endian, then its complete
    # subtrees' hashes) and the last entry's time: a hub whose head was moved by another hub
    # reads them with the lock instead of O(log n) node rows and the last entry. Used only if
    # written at the head's size (an older hub version moves the head without them).
    Column("edge", LargeBinary, nullable=True),
    Column("last_time_ns", BigInteger, nullable=True),
)

ledger_entries = Table(
    "ledger_entries",
    metadata,
    Column("sequence", Key, primary_key=True, autoincrement=False),
    Column("entry", LargeBinary, nullable=False),
    Column("envelope", LargeBinary, nullable=False),
    Column("leaf_hash", LargeBinary, nullable=False),
    # NULL when the entry has no subject, which keeps the index to entries that have one.
    Column("subject_ref", LargeBinary, nullable=True, index=True),
)

ledger_nodes = Table(
    "ledger_nodes",
    metadata,
    Column("node_id", Key, primary_key=True, autoincrement=False),
    Column("hash", LargeBinary, nullable=False),
)

ledger_checkpoints = Table(
    "ledger_checkpoints",
    metadata,
    Column("size", BigInteger, primary_key=True, autoincrement=False),
    Column("root_hash", LargeBinary, nullable=False),
    Column("note", Text, nullable=False),
)

Node = tuple[int, int]
LEVEL_BITS = 6  # levels 1..63
STORED_FROM_LEVEL = 4  # lower subtrees are recomputed from their leaves


def node_id(level: int, index: int) -> int:
    """The ``ledger_nodes`` key of the subtree at (level, index)."""
    return (index << LEVEL_BITS) | level


@dataclass(frozen=True, slots=True)
class Head:
    """The log's end as committed: size and last leaf hash (zeros when empty)."""

    size: int
    last_leaf_hash: bytes


@dataclass(frozen=True, slots=True)
class Edge:
    """What the head row keeps beside the head: the right edge's subtree hashes at its size
    and the last entry's time, or None where an older writer left them out."""

    hashes: list[bytes] | None
    last_time_ns: int | None


# Built once: the writer runs them on every batch, and building costs more than running.
_HEAD = select(ledger_head.c.size, ledger_head.c.last_leaf_hash).where(ledger_head.c.id == HEAD_ID)
_LOCKED = select(
    ledger_head.c.size,
    ledger_head.c.last_leaf_hash,
    ledger_head.c.edge,
    ledger_head.c.last_time_ns,
).where(ledger_head.c.id == HEAD_ID)
_LOCKED_FOR_UPDATE = _LOCKED.with_for_update()
_MOVE_HEAD = (
    update(ledger_head)
    .where(ledger_head.c.id == HEAD_ID)
    .values(
        size=bindparam("new_size"),
        last_leaf_hash=bindparam("new_leaf"),
        edge=bindparam("new_edge"),
        last_time_ns=bindparam("new_time"),
    )
)


def ensure_head(engine: Engine) -> None:
    """Create the head row of an empty log if it is missing (idempotent, race-safe)."""
    with engine.connect() as conn:
        if conn.execute(select(ledger_head.c.id)).first() is not None:
            return
        try:
            conn.execute(insert(ledger_head).values(id=HEAD_ID, size=0, last_leaf_hash=ZERO_HASH))
            conn.commit()
        except IntegrityError:  # another process created it first
            conn.rollback()


def lock_head(conn: Connection) -> Head:
    """Start the write transaction on ``conn`` by locking the head row, and return it.

    On SQLite ``BEGIN IMMEDIATE`` takes the database write lock before the read, so a second
    process can neither interleave nor fail the read-to-write upgrade; on PostgreSQL the row
    lock serialises appenders across hub processes until commit.
    """
    return lock_head_and_edge(conn)[0]


def lock_head_and_edge(conn: Connection) -> tuple[Head, Edge]:
    """``lock_head``, with the right edge and last time kept beside the head (one read)."""
    if conn.dialect.name == "sqlite":
        conn.exec_driver_sql("BEGIN IMMEDIATE")
        row = conn.execute(_LOCKED).first()
    else:
        row = conn.execute(_LOCKED_FOR_UPDATE).first()
    if row is None:
        raise LookupError("ledger_head row is missing (run the migrations)")
    head = Head(size=int(row.size), last_leaf_hash=bytes(row.last_leaf_hash))
    edge = bytes(row.edge) if row.edge is not None else b""
    hashes = [edge[i : i + 32] for i in range(8, len(edge), 32)]
    if (
        len(edge) < 8
        or int.from_bytes(edge[:8], "big") != head.size
        or len(hashes) != head.size.bit_count()
        or row.last_time_ns is None
    ):
        return head, Edge(None, None)
    return head, Edge(hashes, int(row.last_time_ns))


def read_head(conn: Connection) -> Head:
    """The committed head, without locking."""
    row = conn.execute(_HEAD).first()
    if row is None:
        return Head(0, ZERO_HASH)
    return Head(size=int(row.size), last_leaf_hash=bytes(row.last_leaf_hash))


def _insert_many(conn: Connection, table: Table, rows: Sequence[tuple[object, ...]]) -> None:
    # The driver's executemany with plain tuples: the per-row parameter processing of a Core
    # insert costs more than the insert itself at tens of thousands of rows per second. On
    # PostgreSQL, COPY: one statement for the batch, where executemany costs about 30 us per
    # row, the largest part of the head lock's hold time (bench/head_lock.py).
    columns = ", ".join(c.name for c in table.columns)
    if conn.dialect.name == "postgresql":
        driver = conn.connection.driver_connection
        assert driver is not None  # an open connection in a transaction
        with (
            driver.cursor() as cursor,
            cursor.copy(f"COPY {table.name} ({columns}) FROM STDIN (FORMAT BINARY)") as copy,
        ):
            copy.set_types([_PG_TYPES[type(c.type).__name__] for c in table.columns])
            for row in rows:
                copy.write_row(row)
        return
    mark = "?" if conn.dialect.paramstyle == "qmark" else "%s"
    marks = ", ".join(mark for _ in table.columns)
    conn.exec_driver_sql(f"INSERT INTO {table.name} ({columns}) VALUES ({marks})", list(rows))


# The PostgreSQL type of each column type of the ledger's tables, for a binary COPY.
_PG_TYPES = {"BigInteger": "int8", "Integer": "int4", "LargeBinary": "bytea", "Text": "text"}


def write_batch(
    conn: Connection,
    head: Head,
    rows: Sequence[tuple[int, bytes, bytes, bytes, bytes | None]],
    nodes: Sequence[tuple[int, int, bytes]],
    edge: Sequence[bytes],
    last_time_ns: int,
) -> None:
    """Insert entry rows (sequence, entry, envelope, leaf hash, subject ref or None) and node
    rows (level, index, hash), and move the head to ``head`` with the right edge's subtree
    hashes at its size and the last entry's time. Part of the caller's transaction."""
    _insert_many(conn, ledger_entries, rows)
    stored = [
        ((idx << LEVEL_BITS) | level, h) for level, idx, h in nodes if level >= STORED_FROM_LEVEL
    ]
    if stored:
        _insert_many(conn, ledger_nodes, stored)
    conn.execute(
        _MOVE_HEAD,
        {
            "new_size": head.size,
            "new_leaf": head.last_leaf_hash,
            "new_edge": head.size.to_bytes(8, "big") + b"".join(edge),
            "new_time": last_time_ns,
        },
    )


def fetch_nodes(conn: Connection, wanted: Iterable[Node]) -> dict[Node, bytes]:
    """Hashes of complete aligned subtrees (level 0 = leaves). Missing nodes are absent."""
    nodes = set(wanted)
    low = [(level, idx) for level, idx in nodes if 0 < level < STORED_FROM_LEVEL]
    leaves = {idx for level, idx in nodes if level == 0}
    for level, idx in low:
        leaves.update(range(idx << level, (idx + 1) << level))
    inner = sorted(node_id(level, idx) for level, idx in nodes if level >= STORED_FROM_LEVEL)
    found: dict[Node, bytes] = {}
    if leaves:
        for row in conn.execute(
            select(ledger_entries.c.sequence, ledger_entries.c.leaf_hash).where(
                ledger_entries.c.sequence.in_(sorted(leaves))
            )
        ):
            found[(0, int(row.sequence))] = bytes(row.leaf_hash)
        for level, idx in low:
            span = range(idx << level, (idx + 1) << level)
            hashes = [found.get((0, i)) for i in span]
            if all(h is not None for h in hashes):
                found[(level, idx)] = merkle.root(hashes)  # type: ignore[arg-type]
    if inner:
        mask = (1 << LEVEL_BITS) - 1
        for key, h in conn.execute(
            select(ledger_nodes.c.node_id, ledger_nodes.c.hash).where(
                ledger_nodes.c.node_id.in_(inner)
            )
        ):
            found[(int(key) & mask, int(key) >> LEVEL_BITS)] = bytes(h)
    return found


def range_hashes(
    conn: Connection,
    ranges: Sequence[tuple[int, int]],
    cache: dict[Node, bytes] | None = None,
) -> list[bytes]:
    """The Merkle hash of each leaf range, from stored subtrees (O(log n) rows in total).

    ``cache`` supplies nodes known in memory; the rest are read in two queries. Raises
    LookupError if a needed node is missing from the store.
    """
    plans = [merkle.range_subtrees(start, end) for start, end in ranges]
    known = cache if cache is not None else {}
    missing = {node for plan in plans for node in plan if node not in known}
    fetched = fetch_nodes(conn, missing) if missing else {}
    out: list[bytes] = []
    for plan in plans:
        hashes: list[bytes] = []
        for node in plan:
            h = known.get(node) or fetched.get(node)
            if h is None:
                raise LookupError(f"ledger node {node} is missing")
            hashes.append(h)
        out.append(merkle.fold_subtrees(hashes))
    return out


def compact_range(conn: Connection, size: int) -> merkle.CompactRange:
    """Rebuild the right edge of the stored tree of ``size`` leaves (O(log n) rows)."""
    plan = merkle.range_subtrees(0, size)
    found = fetch_nodes(conn, plan)
    try:
        return merkle.CompactRange(size, [found[node] for node in plan])
    except KeyError as exc:
        raise LookupError(f"ledger node {exc.args[0]} is missing") from exc


def store_checkpoint(conn: Connection, checkpoint: Checkpoint) -> bool:
    """Store ``checkpoint`` unless one of that size exists; True if stored."""
    exists = conn.execute(
        select(ledger_checkpoints.c.size).where(ledger_checkpoints.c.size == checkpoint.size)
    ).first()
    if exists is not None:
        return False
    conn.execute(
        insert(ledger_checkpoints).values(
            size=checkpoint.size, root_hash=checkpoint.root_hash, note=checkpoint.note
        )
    )
    return True


def _checkpoint(row: object) -> Checkpoint:
    return Checkpoint.parse(str(row.note))  # type: ignore[attr-defined]


def latest_checkpoint(conn: Connection) -> Checkpoint | None:
    """The stored checkpoint of the largest size, or None."""
    row = conn.execute(
        select(ledger_checkpoints.c.note).order_by(ledger_checkpoints.c.size.desc()).limit(1)
    ).first()
    return None if row is None else _checkpoint(row)


def checkpoint_at(conn: Connection, size: int) -> Checkpoint | None:
    """The stored checkpoint of exactly ``size``, or None."""
    row = conn.execute(
        select(ledger_checkpoints.c.note).where(ledger_checkpoints.c.size == size)
    ).first()
    return None if row is None else _checkpoint(row)


def checkpoints(conn: Connection, up_to: int) -> list[Checkpoint]:
    """Every stored checkpoint of size <= ``up_to``, by size."""
    rows = conn.execute(
        select(ledger_checkpoints.c.note)
        .where(ledger_checkpoints.c.size <= up_to)
        .order_by(ledger_checkpoints.c.size)
    )
    return [_checkpoint(row) for row in rows]


def _stored(row: object) -> StoredEntry:
    return StoredEntry(
        sequence=int(row.sequence),  # type: ignore[attr-defined]
        entry_bytes=bytes(row.entry),  # type: ignore[attr-defined]
        envelope_bytes=bytes(row.envelope),  # type: ignore[attr-defined]
        leaf_hash=bytes(row.leaf_hash),  # type: ignore[attr-defined]
    )


_ENTRY_COLUMNS = (
    ledger_entries.c.sequence,
    ledger_entries.c.entry,
    ledger_entries.c.envelope,
    ledger_entries.c.leaf_hash,
)


def read_entries(conn: Connection, from_sequence: int, limit: int) -> list[StoredEntry]:
    """Up to ``limit`` entries from ``from_sequence`` on, in order."""
    rows = conn.execute(
        select(*_ENTRY_COLUMNS)
        .where(ledger_entries.c.sequence >= from_sequence)
        .order_by(ledger_entries.c.sequence)
        .limit(limit)
    )
    return [_stored(row) for row in rows]


def read_entries_for_subject(conn: Connection, subject_ref: bytes) -> list[StoredEntry]:
    """Every entry recorded with ``subject_ref``, in order."""
    rows = conn.execute(
        select(*_ENTRY_COLUMNS)
        .where(ledger_entries.c.subject_ref == subject_ref)
        .order_by(ledger_entries.c.sequence)
    )
    return [_stored(row) for row in rows]
