"""Registry: departments, their keys, and request idempotency records.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "departments",
        sa.Column("id", sa.String(128), primary_key=True),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("roles", sa.Text, nullable=False),
        sa.Column("provider_endpoint", sa.Text, nullable=False),
        sa.Column("certificate_sha256", sa.String(64), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("owner", sa.String(128), nullable=False),
        sa.Column("registered_us", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "department_keys",
        sa.Column("keyid", sa.String(64), primary_key=True),
        sa.Column("department_id", sa.String(128), sa.ForeignKey("departments.id"), nullable=False),
        sa.Column("public_key", sa.LargeBinary, nullable=False),
        sa.Column("valid_from_us", sa.BigInteger, nullable=False),
        sa.Column("valid_until_us", sa.BigInteger, nullable=True),
        sa.Column("revoked_us", sa.BigInteger, nullable=True),
    )
    op.create_index("ix_department_keys_department", "department_keys", ["department_id"])
    op.create_table(
        "requests",
        sa.Column("department_id", sa.String(128), primary_key=True),
        sa.Column("request_id", sa.String(128), primary_key=True),
        sa.Column("envelope_sha256", sa.LargeBinary(32), nullable=False),
        sa.Column("method", sa.String(128), nullable=False),
        sa.Column("state", sa.Integer, nullable=False),
        sa.Column("response", sa.LargeBinary, nullable=True),
        sa.Column("received_us", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_requests_received", "requests", ["received_us"])


def downgrade() -> None:
    op.drop_table("requests")
    op.drop_index("ix_department_keys_department", "department_keys")
    op.drop_table("department_keys")
    op.drop_table("departments")
