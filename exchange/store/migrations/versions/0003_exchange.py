"""Exchange: catalog (material types, purposes, forms), grants, material index, objections.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "material_types",
        sa.Column("id", sa.String(128), primary_key=True),
        sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("owner", sa.String(128), nullable=False),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("fields", sa.Text, nullable=False),
        sa.Column("sharing_class", sa.String(16), nullable=False),
        sa.Column("retention_days", sa.Integer, nullable=False),
        sa.Column("published_us", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "purposes",
        sa.Column("id", sa.String(128), primary_key=True),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("legal_basis", sa.Text, nullable=False),
        sa.Column("defined_us", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "forms",
        sa.Column("id", sa.String(128), primary_key=True),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("owner", sa.String(128), nullable=False),
        sa.Column("purpose", sa.String(128), nullable=False),
        sa.Column("fields", sa.Text, nullable=False),
        sa.Column("registered_us", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "grants",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("owner", sa.String(128), nullable=False),
        sa.Column("consumer", sa.String(128), nullable=False),
        sa.Column("material_type", sa.String(128), nullable=False),
        sa.Column("fields", sa.Text, nullable=False),
        sa.Column("purposes", sa.Text, nullable=False),
        sa.Column("valid_from_us", sa.BigInteger, nullable=False),
        sa.Column("valid_until_us", sa.BigInteger, nullable=True),
        sa.Column("rate_per_minute", sa.Integer, nullable=False),
        sa.Column("revoked_us", sa.BigInteger, nullable=True),
        sa.Column("issued_us", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_grants_consumer_material_type", "grants", ["consumer", "material_type"])
    op.create_index("ix_grants_owner", "grants", ["owner"])
    op.create_table(
        "materials",
        sa.Column("reference", sa.String(64), primary_key=True),
        sa.Column("material_type", sa.String(128), nullable=False),
        sa.Column("subject_ref", sa.LargeBinary(32), nullable=False),
        sa.Column("version", sa.BigInteger, nullable=False),
        sa.Column("content_hash", sa.LargeBinary(32), nullable=False),
        sa.Column("holder", sa.String(128), nullable=False),
        sa.Column("submitted_by", sa.String(128), nullable=False),
        sa.Column("indexed_us", sa.BigInteger, nullable=False),
        sa.Column("superseded_us", sa.BigInteger, nullable=True),
        sa.UniqueConstraint(
            "material_type",
            "subject_ref",
            "version",
            name="uq_materials_material_type_subject_ref_version",
        ),
    )
    op.create_table(
        "material_fields",
        sa.Column(
            "reference", sa.String(64), sa.ForeignKey("materials.reference"), primary_key=True
        ),
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("field_hash", sa.LargeBinary(32), nullable=False),
    )
    op.create_table(
        "objections",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("material_type", sa.String(128), nullable=False),
        sa.Column("reference", sa.String(64), nullable=False),
        sa.Column("subject_ref", sa.LargeBinary(32), nullable=False),
        sa.Column("filed_by", sa.String(128), nullable=False),
        sa.Column("owner", sa.String(128), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("proposed_fields", sa.Text, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("filed_us", sa.BigInteger, nullable=False),
        sa.Column("deadline_us", sa.BigInteger, nullable=False),
        sa.Column("resolution", sa.Text, nullable=False),
        sa.Column("resolved_us", sa.BigInteger, nullable=True),
    )
    op.create_index("ix_objections_owner_state", "objections", ["owner", "state"])


def downgrade() -> None:
    op.drop_index("ix_objections_owner_state", table_name="objections")
    op.drop_table("objections")
    op.drop_table("material_fields")
    op.drop_table("materials")
    op.drop_index("ix_grants_owner", table_name="grants")
    op.drop_index("ix_grants_consumer_material_type", table_name="grants")
    op.drop_table("grants")
    op.drop_table("forms")
    op.drop_table("purposes")
    op.drop_table("material_types")
