"""Alembic environment: the caller (``tilpheno.review.db.upgrade``) passes an open connection."""
from alembic import context

from tilpheno.review.models import Base

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - only the programmatic entry point is supported
    raise RuntimeError("run migrations through tilpheno.review.db.upgrade(engine)")
context.configure(connection=connection, target_metadata=Base.metadata)
with context.begin_transaction():
    context.run_migrations()
