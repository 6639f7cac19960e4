"""The person in the loop: consents, and the basis each purpose rests on
(see exchange.store.consents and exchange.catalog.model.PurposeBasis).

Revision ID: 0008
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Purposes defined before bases existed rest on the law alone, as they always did.
    with op.batch_alter_table("purposes") as batch:
        batch.add_column(
            sa.Column("basis", sa.String(16), nullable=False, server_default="LEGAL_BASIS")
        )
    op.create_table(
        "consents",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("subject_ref", sa.LargeBinary(32), nullable=False),
        sa.Column("consumer", sa.String(128), nullable=False),
        sa.Column("material_type", sa.String(128), nullable=False),
        sa.Column("fields", sa.Text, nullable=False),
        sa.Column("purpose", sa.String(128), nullable=False),
        sa.Column("valid_from_us", sa.BigInteger, nullable=False),
        sa.Column("valid_until_us", sa.BigInteger, nullable=False),
        sa.Column("max_uses", sa.Integer, nullable=False),
        sa.Column("min_interval_seconds", sa.Integer, nullable=False),
        sa.Column("data_life_days", sa.Integer, nullable=False),
        sa.Column("uses", sa.Integer, nullable=False),
        sa.Column("last_used_us", sa.BigInteger, nullable=True),
        sa.Column("given_us", sa.BigInteger, nullable=False),
        sa.Column("revoked_us", sa.BigInteger, nullable=True),
        sa.Column("given_through", sa.String(128), nullable=False),
        sa.Column("identity_provider", sa.String(128), nullable=False),
        sa.Column("assurance_level", sa.String(32), nullable=False),
    )
    op.create_index("ix_consents_subject_ref", "consents", ["subject_ref"])
    op.create_index("ix_consents_consumer_material_type", "consents", ["consumer", "material_type"])


def downgrade() -> None:
    op.drop_table("consents")
    with op.batch_alter_table("purposes") as batch:
        batch.drop_column("basis")
