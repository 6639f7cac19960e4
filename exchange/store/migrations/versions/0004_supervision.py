"""Supervision: cursor, alerts, open objections, burden counters, form-tool usage
(see exchange.supervision.store).

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    cursor = op.create_table(
        "supervision_cursor",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("next_sequence", sa.BigInteger, nullable=False),
    )
    op.bulk_insert(cursor, [{"id": 1, "next_sequence": 0}])
    op.create_table(
        "supervision_alerts",
        sa.Column("id", sa.String(200), primary_key=True),
        sa.Column("level", sa.SmallInteger, nullable=False),
        sa.Column("category", sa.String(16), nullable=False),
        sa.Column("rule", sa.String(64), nullable=False),
        sa.Column("department", sa.String(128), nullable=False),
        sa.Column("material_type", sa.String(128), nullable=False),
        sa.Column("message", sa.Text, nullable=False),
        sa.Column("sequence", sa.BigInteger, nullable=False),
        sa.Column("raised_us", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_supervision_alerts_raised_us", "supervision_alerts", ["raised_us"])
    op.create_table(
        "supervision_objections",
        sa.Column("objection_id", sa.String(128), primary_key=True),
        sa.Column("owner", sa.String(128), nullable=False),
        sa.Column("material_type", sa.String(128), nullable=False),
        sa.Column("filed_us", sa.BigInteger, nullable=False),
        sa.Column("deadline_us", sa.BigInteger, nullable=False),
        sa.Column("sequence", sa.BigInteger, nullable=False),
        sa.Column("level", sa.SmallInteger, nullable=False),
    )
    op.create_index(
        "ix_supervision_objections_deadline_us", "supervision_objections", ["deadline_us"]
    )
    op.create_table(
        "supervision_burden",
        sa.Column("material_type", sa.String(128), primary_key=True),
        sa.Column("holder", sa.String(128), nullable=False),
        sa.Column("stored", sa.BigInteger, nullable=False),
        sa.Column("avoided", sa.BigInteger, nullable=False),
        sa.Column("served", sa.BigInteger, nullable=False),
        sa.Column("refused", sa.BigInteger, nullable=False),
        sa.Column("failed", sa.BigInteger, nullable=False),
        sa.Column("prefills", sa.BigInteger, nullable=False),
        sa.Column("last_use_us", sa.BigInteger, nullable=True),
        sa.Column("listed_us", sa.BigInteger, nullable=True),
    )
    op.create_table(
        "supervision_usage",
        sa.Column("department", sa.String(128), primary_key=True),
        sa.Column("day", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("uses", sa.BigInteger, nullable=False),
        sa.Column("last_use_us", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("supervision_usage")
    op.drop_table("supervision_burden")
    op.drop_index("ix_supervision_objections_deadline_us", table_name="supervision_objections")
    op.drop_table("supervision_objections")
    op.drop_index("ix_supervision_alerts_raised_us", table_name="supervision_alerts")
    op.drop_table("supervision_alerts")
    op.drop_table("supervision_cursor")
