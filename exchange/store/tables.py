"""Tables of the registry and of request idempotency.

Times are stored as integer microseconds since the Unix epoch (UTC): the same on SQLite and
PostgreSQL, exact, and cheap to compare.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Table,
    Text,
)

from exchange.store.metadata import metadata

departments = Table(
    "departments",
    metadata,
    Column("id", String(128), primary_key=True),
    Column("name", Text, nullable=False),
    Column("roles", Text, nullable=False),  # comma-separated Role names, sorted
    Column("provider_endpoint", Text, nullable=False, default=""),
    Column("certificate_sha256", String(64), nullable=False, default=""),
    Column("state", String(16), nullable=False),
    Column("owner", String(128), nullable=False, default=""),
    Column("registered_us", BigInteger, nullable=False),
)

department_keys = Table(
    "department_keys",
    metadata,
    Column("keyid", String(64), primary_key=True),
    Column("department_id", String(128), ForeignKey("departments.id"), nullable=False),
    Column("public_key", LargeBinary, nullable=False),
    Column("valid_from_us", BigInteger, nullable=False),
    Column("valid_until_us", BigInteger, nullable=True),
    Column("revoked_us", BigInteger, nullable=True),
    Index("ix_department_keys_department", "department_id"),
)

# One row per (department, request id): the request id's life (exchange.store.requests).
# ``state`` is PENDING (0) while the call runs, held by ``holder`` until ``lease_until_us``;
# ANSWERED (1) or REFUSED (2) with ``response`` the sealed answer (a serialized response, or
# google.rpc.Status), committed with the call's entry (``ledger_sequence``); COMMITTED (3) when
# the entry is committed and the answer not yet stored.
requests = Table(
    "requests",
    metadata,
    Column("department_id", String(128), primary_key=True),
    Column("request_id", String(128), primary_key=True),
    Column("envelope_sha256", LargeBinary(32), nullable=False),
    Column("method", String(128), nullable=False),
    Column("state", Integer, nullable=False),
    Column("response", LargeBinary, nullable=True),
    Column("received_us", BigInteger, nullable=False),
    Column("holder", String(200), nullable=True),
    Column("lease_until_us", BigInteger, nullable=True),
    Column("ledger_sequence", BigInteger, nullable=True),
    Index("ix_requests_received", "received_us"),
)
