"""Signature software: the tilpheno version and code digest a signature was made under.

A signature binds the gates, the data and the spec (``data_sha256``), not the code that computes the
approved numbers from them: an upgrade that places other automatic gates makes a new version (the
signature void), one that computes other numbers from the same gates does not. From this revision
each signature records the software it was made under (``software``: canonical JSON of the
tilpheno version and ``tilpheno.cache.code_digest``), part of its signed content, so the page, the
list, the certificate and the approved export say when it differs from the software running now.
Signatures made before keep an empty ``software``; their content, and so their SHA-256, is unchanged
(``audit.signature_content`` leaves the field out when empty).

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
    # a new column with a constant default: no existing row is updated (the append-only triggers stay quiet)
    op.add_column("signatures", sa.Column("software", sa.Text, nullable=False, server_default=""))


def downgrade() -> None:
    op.drop_column("signatures", "software")
