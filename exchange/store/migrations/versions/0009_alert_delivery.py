"""Alert delivery: which supervision alerts each sink (webhook, syslog) has received
(see exchange.observability.alerts).

Revision ID: 0009
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "alert_deliveries",
        sa.Column("sink", sa.String(16), primary_key=True),
        sa.Column("alert_id", sa.String(200), primary_key=True),
        sa.Column("state", sa.String(12), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("next_attempt_us", sa.BigInteger, nullable=False),
        sa.Column("delivered_us", sa.BigInteger, nullable=True),
    )
    op.create_index(
        "ix_alert_deliveries_due", "alert_deliveries", ["sink", "state", "next_attempt_us"]
    )


def downgrade() -> None:
    op.drop_index("ix_alert_deliveries_due", table_name="alert_deliveries")
    op.drop_table("alert_deliveries")
