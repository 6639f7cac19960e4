"""Tables of the catalog, grants, the material index and objections.

Times are integer microseconds since the Unix epoch (UTC), as in ``exchange.store.tables``.
The index holds no personal data: subjects appear as keyed subject refs, content and fields as
keyed hashes (docs/content-hash.md). Objections are the one exception: their reasons
and proposed values wait here for the owner, who alone may store them, sealed under the hub's
at-rest key (exchange.crypto.sealing.AtRest) and the proposed values erased at resolution.
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
    UniqueConstraint,
)

from exchange.store.metadata import metadata

# Every version of every material type; the latest is the one in force.
material_types = Table(
    "material_types",
    metadata,
    Column("id", String(128), primary_key=True),
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("owner", String(128), nullable=False),
    Column("name", Text, nullable=False),
    Column("fields", Text, nullable=False),  # JSON list of {name, type, required, description}
    Column("sharing_class", String(16), nullable=False),
    Column("retention_days", Integer, nullable=False),
    Column("published_us", BigInteger, nullable=False),
    Column("subject_id_scheme", String(16), nullable=False, server_default="CN_MAINLAND"),
)

purposes = Table(
    "purposes",
    metadata,
    Column("id", String(128), primary_key=True),
    Column("name", Text, nullable=False),
    Column("legal_basis", Text, nullable=False),
    Column("defined_us", BigInteger, nullable=False),
    # PurposeBasis: LEGAL_BASIS, PERSON_PRESENT or PERSON_CONSENT (exchange.catalog.model).
    Column("basis", String(16), nullable=False, server_default="LEGAL_BASIS"),
)

forms = Table(
    "forms",
    metadata,
    Column("id", String(128), primary_key=True),
    Column("name", Text, nullable=False),
    Column("owner", String(128), nullable=False),
    Column("purpose", String(128), nullable=False),
    Column("fields", Text, nullable=False),  # JSON list of {name, label, material_type, ...}
    Column("registered_us", BigInteger, nullable=False),
)

grants = Table(
    "grants",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("owner", String(128), nullable=False),
    Column("consumer", String(128), nullable=False),
    Column("material_type", String(128), nullable=False),
    Column("fields", Text, nullable=False),  # comma-separated, sorted
    Column("purposes", Text, nullable=False),  # comma-separated, sorted
    Column("valid_from_us", BigInteger, nullable=False),
    Column("valid_until_us", BigInteger, nullable=True),
    Column("rate_per_minute", Integer, nullable=False),
    Column("revoked_us", BigInteger, nullable=True),
    Column("issued_us", BigInteger, nullable=False),
    Index("ix_grants_consumer_material_type", "consumer", "material_type"),
    Index("ix_grants_owner", "owner"),
)

# One row per version of one material; the current version has superseded_us NULL.
materials = Table(
    "materials",
    metadata,
    Column("reference", String(64), primary_key=True),
    Column("material_type", String(128), nullable=False),
    Column("subject_ref", LargeBinary(32), nullable=False),
    Column("version", BigInteger, nullable=False),
    Column("content_hash", LargeBinary(32), nullable=False),
    Column("holder", String(128), nullable=False),
    Column("submitted_by", String(128), nullable=False),
    Column("indexed_us", BigInteger, nullable=False),
    Column("superseded_us", BigInteger, nullable=True),
    UniqueConstraint("material_type", "subject_ref", "version"),
)

# Keyed hash of each field of each indexed version: lets the hub check a provider's answer that
# carries only some fields (a Request returns only the granted ones).
material_fields = Table(
    "material_fields",
    metadata,
    Column("reference", String(64), ForeignKey("materials.reference"), primary_key=True),
    Column("name", String(64), primary_key=True),
    Column("field_hash", LargeBinary(32), nullable=False),
)

# Objections against a material (a reason, and corrections proposed), waiting for its owner.
# ``reason``, ``proposed_fields`` (JSON) and ``resolution`` are sealed text ("sealed:v1:…",
# AtRest, bound to the id); the proposed values are in flight to the owner, erased at resolution,
# never logged.
objections = Table(
    "objections",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("material_type", String(128), nullable=False),
    Column("reference", String(64), nullable=False),
    Column("subject_ref", LargeBinary(32), nullable=False),
    Column("filed_by", String(128), nullable=False),
    Column("owner", String(128), nullable=False),
    Column("reason", Text, nullable=False),
    Column("proposed_fields", Text, nullable=False),
    Column("state", String(16), nullable=False),
    Column("filed_us", BigInteger, nullable=False),
    Column("deadline_us", BigInteger, nullable=False),
    Column("resolution", Text, nullable=False),
    Column("resolved_us", BigInteger, nullable=True),
    Index("ix_objections_owner_state", "owner", "state"),
)
