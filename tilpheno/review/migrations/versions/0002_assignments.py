"""Product assignments: an analyst sees and edits only the products assigned to them.

Before this revision every analyst saw and edited every product. So that an upgrade takes nothing
away, each analyst account of the database is assigned every product the database holds
(``assigned_by`` ``ASSIGNED_BY``); ``tilpheno.review.db.upgrade`` audits them in its
``schema_upgrade`` entry. A product of the run never opened before the upgrade is not in the
database, so it is not assigned: an admin assigns it (``tilpheno users assign``). The assignments'
``assigned_at`` is the record's clock that ``db.upgrade`` is given (PostgreSQL's by default).

Revision ID: 0002
Revises: 0001
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.orm import Session

from tilpheno.review.audit import DATABASE_CLOCK

ASSIGNED_BY = "upgrade 0001 -> 0002"

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
    table = sa.table("product_assignments", sa.column("product_id", sa.String), sa.column("username", sa.String),
                     sa.column("assigned_by", sa.String), sa.column("assigned_at", sa.String))
    pairs = op.get_bind().execute(sa.text("SELECT u.username, p.product_id FROM users u, products p "
                                          "WHERE u.role = 'analyst' ORDER BY u.username, p.product_id")).all()
    config = op.get_context().config   # db.upgrade's: the record's clock in its attributes
    clock = config.attributes["clock"] if config is not None and "clock" in config.attributes else DATABASE_CLOCK
    with Session(bind=op.get_bind()) as db:
        now = clock.stamp(db)
    if pairs:
        op.bulk_insert(table, [{"product_id": product_id, "username": username, "assigned_by": ASSIGNED_BY,
                                "assigned_at": now} for username, product_id in pairs])


def downgrade() -> None:
    op.drop_table("product_assignments")
