"""The review database schema (SQLAlchemy 2 ORM). Migrations in ``migrations/versions`` create it.

Times are stored as UTC ISO 8601 text (``2026-12-02T07:45:01.123456Z``) so that they hash
identically on every database. ``audit_entries``, ``gate_set_versions`` and ``signatures`` are
append-only: database triggers (created by the migration) refuse UPDATE and DELETE. ``refusal_windows``
is a working table (rows counted and deleted as windows close; ``tilpheno.review.refusals``).
"""
from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import Boolean, Float, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

ROLES = ("analyst", "reviewer", "admin")


def utc(seconds: float) -> str:
    """``seconds`` since the epoch as times are stored: UTC, ISO 8601 with microseconds and a ``Z``."""
    return datetime.fromtimestamp(seconds, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    full_name: Mapped[str] = mapped_column(String(200))
    role: Mapped[str] = mapped_column(String(16))
    password_hash: Mapped[str] = mapped_column(String(200))
    failed_logins: Mapped[int] = mapped_column(Integer, default=0)
    locked_until: Mapped[str | None] = mapped_column(String(32), nullable=True)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[str] = mapped_column(String(32))


class LoginSession(Base):
    __tablename__ = "login_sessions"
    token_sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), nullable=True)
    csrf_token: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[str] = mapped_column(String(32))
    expires_at: Mapped[str] = mapped_column(String(32))


class Product(Base):
    __tablename__ = "products"
    product_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    current_version: Mapped[int] = mapped_column(Integer)
    inputs_json: Mapped[str] = mapped_column(Text)        # service.inputs_record: {files, controls}; older rows: files only
    til_dose_cells: Mapped[float | None] = mapped_column(Float, nullable=True)
    imported_at: Mapped[str] = mapped_column(String(32))


class GateSetVersion(Base):
    __tablename__ = "gate_set_versions"
    __table_args__ = (UniqueConstraint("product_id", "version", name="uq_gate_set_product_version"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    product_id: Mapped[str] = mapped_column(ForeignKey("products.product_id"))
    version: Mapped[int] = mapped_column(Integer)
    based_on: Mapped[int | None] = mapped_column(Integer, nullable=True)
    gates_json: Mapped[str] = mapped_column(Text)
    gates_sha256: Mapped[str] = mapped_column(String(64))
    source: Mapped[str] = mapped_column(String(300))     # automatic | adjusted | batch from <product> v<n>
    reason: Mapped[str] = mapped_column(Text)
    created_by: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[str] = mapped_column(String(32))


class Signature(Base):
    __tablename__ = "signatures"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    product_id: Mapped[str] = mapped_column(ForeignKey("products.product_id"))
    version: Mapped[int] = mapped_column(Integer)
    meaning: Mapped[str] = mapped_column(String(40))
    username: Mapped[str] = mapped_column(String(64))
    full_name: Mapped[str] = mapped_column(String(200))
    role: Mapped[str] = mapped_column(String(16))
    signed_at: Mapped[str] = mapped_column(String(32))
    data_sha256: Mapped[str] = mapped_column(String(64))
    gates_sha256: Mapped[str] = mapped_column(String(64))
    qc_resolutions_json: Mapped[str] = mapped_column(Text)
    comment: Mapped[str] = mapped_column(Text)
    # why an approval of a version that fails its release criteria releases it anyway ("" otherwise,
    # and for signatures made before revision 0003, whose comment was that justification)
    oos_justification: Mapped[str] = mapped_column(Text, default="")
    # the software it was made under (canonical JSON: tilpheno version and code digest; "" for
    # signatures made before revision 0004)
    software: Mapped[str] = mapped_column(Text, default="")
    signature_sha256: Mapped[str] = mapped_column(String(64))


class AuditEntry(Base):
    __tablename__ = "audit_entries"
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    at: Mapped[str] = mapped_column(String(32))
    username: Mapped[str] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(40))
    product_id: Mapped[str] = mapped_column(String(200))
    before_json: Mapped[str] = mapped_column(Text)
    after_json: Mapped[str] = mapped_column(Text)
    reason: Mapped[str] = mapped_column(Text)
    prev_sha256: Mapped[str] = mapped_column(String(64))
    entry_sha256: Mapped[str] = mapped_column(String(64))


class AuditHead(Base):
    """The newest entry's number and hash (so deleting the last entries is detected too)."""

    __tablename__ = "audit_head"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    seq: Mapped[int] = mapped_column(Integer)
    entry_sha256: Mapped[str] = mapped_column(String(64))


class ProductAssignment(Base):
    """An analyst's access to a product (reviewers and admins see every product)."""

    __tablename__ = "product_assignments"
    __table_args__ = (UniqueConstraint("product_id", "username", name="uq_assignment_product_user"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    product_id: Mapped[str] = mapped_column(String(200))
    username: Mapped[str] = mapped_column(ForeignKey("users.username"))
    assigned_by: Mapped[str] = mapped_column(String(64))
    assigned_at: Mapped[str] = mapped_column(String(32))


class RefusalWindow(Base):
    """An open window of identical refused requests (``tilpheno.review.refusals``): one user's
    request (method and path), the product it named and the refusal. ``repeats_entry``: the ``seq``
    of its ``access_refused`` entry, and ``count`` the identical refusals after it; None for a
    request folded into its user's one window beyond the cap, ``count`` then every refusal of it.
    ``opened``: seconds since the epoch (the database's clock, ``audit.Clock``; a
    folded request: its user's folded window's); ``opened_at`` and ``last_at`` by that clock too."""

    __tablename__ = "refusal_windows"
    __table_args__ = (Index("ix_refusal_windows_user_opened", "username", "opened"),)
    key_sha256: Mapped[str] = mapped_column(String(64), primary_key=True)   # of [username, request, product_id, refusal]
    username: Mapped[str] = mapped_column(String(64))
    request: Mapped[str] = mapped_column(String(500))
    product_id: Mapped[str] = mapped_column(String(200))
    refusal: Mapped[str] = mapped_column(Text)
    opened: Mapped[float] = mapped_column(Float, index=True)
    opened_at: Mapped[str] = mapped_column(String(32))
    repeats_entry: Mapped[int | None] = mapped_column(Integer, nullable=True)
    count: Mapped[int] = mapped_column(Integer)
    last_at: Mapped[str] = mapped_column(String(32))
