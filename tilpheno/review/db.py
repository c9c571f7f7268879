"""Database URL, engine and schema migrations (Alembic) for the review app.

Default database: an SQLite file beside the output folder, ``<OUT>.review.sqlite`` (the output
folder itself stays the pipeline's). A lab server passes a PostgreSQL URL
(``postgresql://user:password@host/db``; driver psycopg 3). ``open_database`` upgrades the schema
to the newest migration before use, so every database has the same tables and triggers.

SQLAlchemy is imported where an engine is made (:func:`make_engine`, :func:`open_database`), not
with this module: ``tilpheno process`` reads the default database beside its output folder with
the standard library's ``sqlite3`` alone (:func:`decided_products`, at the end of every run), and
importing SQLAlchemy there was 0.22-0.29 s of CPU in the run's serial tail (benchmarks/README.md,
stop 53).
"""
from __future__ import annotations

import logging
import sqlite3
import threading
from contextlib import closing
from pathlib import Path
from typing import TYPE_CHECKING

from tilpheno.errors import TilphenoError

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from tilpheno.review.audit import Clock
    from sqlalchemy.orm import sessionmaker

MIGRATIONS = Path(__file__).with_name("migrations")
log = logging.getLogger(__name__)
_MIGRATING = threading.Lock()   # Alembic's migration context is one per process: one thread migrates at a time


class ReviewError(TilphenoError):
    """A review-app problem that is the user's input (bad URL, unknown user, ...): one line."""


def default_db_path(out_dir: str | Path) -> Path:
    """``<OUT>.review.sqlite``, beside the output folder (it stays where it was made when OUT moves)."""
    out = Path(out_dir).resolve()
    return out.parent / (out.name + ".review.sqlite")


def holds_review_database(path: Path) -> bool:
    """Whether the SQLite file ``path`` holds a review database (its schema: Alembic's version
    table). A missing file does not, nor one a failed first command left (a full disk: 0 bytes, or
    a header and no table). A file SQLite cannot read counts as holding one: opening it says why."""
    if not path.exists():
        return False
    try:
        with closing(sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)) as conn:
            return conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'alembic_version'").fetchone() is not None
    except sqlite3.Error as exc:
        log.debug("%s: not readable as SQLite (%s)", path, exc)
        return True


def decided_products(path: Path) -> list[str]:
    """The products of which the SQLite review database ``path`` holds an approval or rejection
    (valid or void), sorted, read without changing it (read-only, no schema upgrade); [] when
    there is no such file, or it holds no review database or cannot be read."""
    if not holds_review_database(path):
        return []
    try:
        with closing(sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)) as conn:
            rows = conn.execute("SELECT DISTINCT product_id FROM signatures WHERE meaning IN (?, ?) ORDER BY product_id",
                                ("approved for release", "rejected")).fetchall()
    except sqlite3.Error as exc:
        log.debug("%s: signatures not readable (%s)", path, exc)
        return []
    return [str(pid) for (pid,) in rows]


def default_db_url(out_dir: str | Path) -> str:
    """``sqlite:///<OUT>.review.sqlite``: a file beside the output folder. ReviewError when that
    file does not exist yet and OUT is not a processed output folder (no ``run.json``): a mistyped
    OUT would otherwise start a new, empty database beside whatever it names."""
    out = Path(out_dir).resolve()
    path = default_db_path(out)
    if not path.exists() and not (out / "run.json").is_file():
        raise ReviewError(f"{out_dir}: not a processed output folder (no run.json) and no review database "
                          f"{path.name} beside it; name the output folder of a run, or the database's URL")
    return f"sqlite:///{path}"


def normalise_url(url: str) -> str:
    """Accept ``postgresql://`` / ``postgres://`` and use the psycopg 3 driver; keep ``sqlite:///``."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    if url.startswith(("postgresql+psycopg://", "sqlite:///")):
        return url
    raise ReviewError(f"database URL {url!r}: use sqlite:///FILE or postgresql://user:password@host/database")


def make_engine(url: str) -> Engine:
    from sqlalchemy import create_engine, event

    url = normalise_url(url)
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _pragmas(conn, _record):  # foreign keys on, WAL for concurrent readers
            cur = conn.cursor()
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA journal_mode=WAL")
            cur.close()
    else:
        engine = create_engine(url, pool_pre_ping=True)
    return engine


def upgrade(engine: Engine, clock: Clock | None = None) -> None:
    """Apply every Alembic migration not yet applied (``alembic upgrade head``). The database's write
    lock (SQLite) or an advisory lock (PostgreSQL) is taken first, so processes opening a new
    database at once (two servers, ``users add`` beside ``serve``) migrate it one after the other:
    the second finds it at head (each used to create the tables, the second failing "already exists");
    threads of one process migrate one after the other too (:data:`_MIGRATING`: Alembic's context is
    the process's, shared by threads). Upgrading a database that had a schema is audited (:func:`_audit_upgrade`), in the same
    transaction; making a new, empty one is not (there is nothing yet to change). ``clock``: the
    record's (:class:`~tilpheno.review.audit.Clock`), the time of the assignments revision 0002
    makes and of the ``schema_upgrade`` entry (default: the database's)."""
    from alembic import command
    from alembic.config import Config
    from alembic.migration import MigrationContext

    from tilpheno.review import audit

    clock = clock or audit.DATABASE_CLOCK
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with _MIGRATING, engine.begin() as conn:
        if conn.dialect.name == "sqlite":
            conn.exec_driver_sql("BEGIN IMMEDIATE")   # waits (busy timeout) while another process migrates
        else:
            conn.exec_driver_sql("SELECT pg_advisory_xact_lock(8265031)")   # held until this transaction ends
        before = MigrationContext.configure(conn).get_current_revision()
        assigned = _assignments(conn)
        cfg.attributes["connection"] = conn
        cfg.attributes["clock"] = clock   # read by migrations that write times (0002)
        command.upgrade(cfg, "head")
        after = MigrationContext.configure(conn).get_current_revision()
        if before is not None and after != before:
            _audit_upgrade(conn, before, str(after), sorted(_assignments(conn) - assigned), clock)


def _assignments(conn) -> set[tuple[str, str]]:
    """``(username, product_id)`` of every product assignment (none before revision 0002)."""
    from sqlalchemy import inspect, text

    if not inspect(conn).has_table("product_assignments"):
        return set()
    return {(u, p) for u, p in conn.execute(text("SELECT username, product_id FROM product_assignments"))}


def _audit_upgrade(conn, before: str, after: str, added: list[tuple[str, str]], clock: Clock) -> None:
    """The ``schema_upgrade`` entry (user ``system``): the revisions before and after, and the product
    assignments the migrations made so that analysts keep the products they saw (revision 0002:
    every product in the database, to every analyst); also logged as a warning for the admin."""
    from sqlalchemy.orm import Session

    from tilpheno.review import audit

    reason = f"review database schema upgraded from revision {before} to {after}"
    if added:
        users = sorted({u for u, _ in added})
        reason += (f"; analysts saw every product before revision 0002, so {len(added)} assignment(s) keep what "
                   f"{', '.join(users)} saw: every product in the database (a product never opened before the "
                   "upgrade needs: tilpheno users assign OUT NAME PRODUCT; withdraw with --remove)")
    with Session(bind=conn) as db:
        audit.append(db, "system", "schema_upgrade", before={"revision": before},
                     after={"revision": after, "assignments_added": [{"username": u, "product_id": p} for u, p in added]},
                     reason=reason, clock=clock)
    log.warning("%s", reason)


def _create_sqlite_whole(path: Path) -> None:
    """Make the new SQLite database ``path`` whole or not at all: its schema is made in a temporary
    sibling, which is then linked to ``path`` (``os.link`` refuses when another process made
    ``path`` meanwhile: that one is used; on a file system without hard links it is renamed to
    ``path`` if that is still free, the check and the rename under the lock file ``.<name>.lock``
    (:func:`tilpheno.io.atomic.held_lock`), so a
    second creator never replaces the first's database). A failure (a full disk) removes the temporary file, so no
    database file without tables is left behind; the temporary of a killed process is a hidden
    ``.<name>.<pid>.<thread>.creating`` beside it (the thread's too: two threads of one process
    making ``path`` at once each make their own)."""
    import errno
    import os

    from tilpheno.io.atomic import held_lock

    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.creating")
    try:
        engine = make_engine(f"sqlite:///{tmp}")
        try:
            upgrade(engine)
        finally:
            engine.dispose()   # the last connection closed: its write-ahead log is folded into the file
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
        except OSError as exc:   # a file system without hard links (some network shares): renamed, if still free
            if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.ENOSYS):
                raise
            with held_lock(path.with_name(f".{path.name}.lock")):
                if not path.exists():
                    os.replace(tmp, path)
    finally:
        for leftover in (tmp, Path(f"{tmp}-wal"), Path(f"{tmp}-shm")):
            leftover.unlink(missing_ok=True)


def _running(pid: int) -> bool:
    """Whether process ``pid`` of this machine exists (another user's too)."""
    import os

    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:   # another user's process
        pass
    return True


def _remove_dead_creations(path: Path) -> None:
    """Remove the temporary files (:func:`_create_sqlite_whole`: ``.<name>.<pid>.<thread>.creating`` and its
    ``-wal``, ``-shm``, ``-journal``) that a command killed while making ``path`` left beside it,
    nothing else removes: those of a process no longer running, one log line each; never a running
    process's (its database being made). The pid is this machine's: POSIX only (signal 0 checks a
    process without sending anything)."""
    import os
    import re

    if os.name != "posix" or not path.parent.is_dir():
        return
    pattern = re.compile(rf"\.{re.escape(path.name)}\.(\d+)(?:\.\d+)?\.creating(?:-wal|-shm|-journal)?")
    left: dict[int, list[Path]] = {}
    try:
        for entry in path.parent.iterdir():
            if (found := pattern.fullmatch(entry.name)) is not None:
                left.setdefault(int(found.group(1)), []).append(entry)
        for pid, files in sorted(left.items()):
            if _running(pid):
                continue
            for leftover in files:
                leftover.unlink(missing_ok=True)
            log.warning("%s: removed %s, left by process %d (no longer running) killed while making that database",
                        path, ", ".join(sorted(f.name for f in files)), pid)
    except OSError as exc:   # tidying only: the command goes on (opening the database says what is wrong)
        log.warning("%s: a leftover of a killed command beside it not removed: %s", path, exc)


def open_database(url: str, clock: Clock | None = None) -> sessionmaker:
    """Engine for ``url``, schema upgraded (:func:`upgrade`, its times by ``clock``), and a session
    factory (``expire_on_commit=False``). A new
    SQLite file is made with its schema or not at all (:func:`_create_sqlite_whole`); the temporary
    files of a killed first command beside an SQLite file are removed (:func:`_remove_dead_creations`)."""
    from sqlalchemy.orm import sessionmaker

    engine = make_engine(url)
    try:
        database = engine.url.database if engine.url.get_backend_name() == "sqlite" else None
        if database not in (None, "", ":memory:"):
            path = Path(str(database))
            _remove_dead_creations(path)
            if not path.exists():
                _create_sqlite_whole(path)
        upgrade(engine, clock)
    except Exception as exc:  # connection refused, bad credentials, ...: one line
        if isinstance(exc, TilphenoError):
            raise
        raise ReviewError(f"database {engine.url.render_as_string(hide_password=True)}: {type(exc).__name__}: "
                          f"{str(exc).splitlines()[0] if str(exc) else ''}") from exc
    return sessionmaker(engine, expire_on_commit=False)
