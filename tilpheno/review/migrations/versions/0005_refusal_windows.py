"""Refusal windows: the counts of identical refused requests kept in the database, not in a server's memory.

Before this revision a server process counted identical refusals (HTTP 403) in memory until their
window closed: a crash or kill lost them (the trail then under-stated what was refused), and server
processes sharing one database counted apart. From this revision the open windows are rows of
``refusal_windows`` (``tilpheno.review.refusals``): counted under the row's lock, deleted as their
entry is written. A working table, not append-only: no trigger.

Revision ID: 0005
Revises: 0004
"""
import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "refusal_windows",
        sa.Column("key_sha256", sa.String(64), primary_key=True),
        sa.Column("username", sa.String(64), nullable=False),
        sa.Column("request", sa.String(500), nullable=False),
        sa.Column("product_id", sa.String(200), nullable=False),
        sa.Column("refusal", sa.Text, nullable=False),
        sa.Column("opened", sa.Float, nullable=False),
        sa.Column("opened_at", sa.String(32), nullable=False),
        sa.Column("repeats_entry", sa.Integer, nullable=True),
        sa.Column("count", sa.Integer, nullable=False),
        sa.Column("last_at", sa.String(32), nullable=False),
    )
    op.create_index("ix_refusal_windows_opened", "refusal_windows", ["opened"])
    op.create_index("ix_refusal_windows_user_opened", "refusal_windows", ["username", "opened"])


def downgrade() -> None:
    op.drop_table("refusal_windows")
