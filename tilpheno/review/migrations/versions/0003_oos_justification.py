"""Out-of-specification justification: a signature's own field for why a lot that fails its release
criteria is released anyway, apart from its comment.

Before this revision an approval of a version that fails the release criteria took its
justification from the comment, which a reviewer may have written for another purpose (why they
overrule a rejection). Signatures made before keep an empty ``oos_justification``; their content,
and so their SHA-256, is unchanged (``audit.signature_content`` leaves the field out when empty),
and the app shows their comment as the justification they were signed with.

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
    # a new column with a constant default: no existing row is updated (the append-only triggers stay quiet)
    op.add_column("signatures", sa.Column("oos_justification", sa.Text, nullable=False, server_default=""))


def downgrade() -> None:
    op.drop_column("signatures", "oos_justification")
