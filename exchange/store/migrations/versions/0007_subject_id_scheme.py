"""Material types declare the id scheme of their subjects (exchange.crypto.subject); types
published before carry the default, CN_MAINLAND.

Revision ID: 0007
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("material_types") as table:
        table.add_column(
            sa.Column(
                "subject_id_scheme", sa.String(16), nullable=False, server_default="CN_MAINLAND"
            )
        )


def downgrade() -> None:
    with op.batch_alter_table("material_types") as table:
        table.drop_column("subject_id_scheme")
