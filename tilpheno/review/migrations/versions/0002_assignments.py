"""Product assignments: an analyst sees and edits only the products assigned to them.

Revision ID: 0002
Revises: 0001
"""
import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "product_assignments",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("product_id", sa.String(200), nullable=False),
        sa.Column("username", sa.String(64), sa.ForeignKey("users.username"), nullable=False),
        sa.Column("assigned_by", sa.String(64), nullable=False),
        sa.Column("assigned_at", sa.String(32), nullable=False),
        sa.UniqueConstraint("product_id", "username", name="uq_assignment_product_user"),
    )


def downgrade() -> None:
    op.drop_table("product_assignments")
