"""Writers that meet: two threads making one review database, two new-study runs into one folder,
a draft whose renames stop part-way. Each leaves one whole result or a leftover named in one line."""
from __future__ import annotations

import threading

from tilpheno.review import db as review_db


def test_two_threads_making_one_review_database_each_use_their_own_temporary(tmp_path, monkeypatch):
    """Two threads of one process (a server's two first requests, an embedding application) make the
    new database at once. Its hidden temporary was named by the process alone, so they shared it: the
    first to finish removed it, and the second failed linking a temporary that was gone
    (FileNotFoundError, the command's first line of work lost); and the two migrations at once
    shared Alembic's one context of the process (KeyError 'config', 'table users already exists').
    Now each call makes its own temporary, the threads migrate one after the other, and both find the
    one database, its schema whole, no temporary left."""
    path = tmp_path / "out.review.sqlite"
    made, first_done = threading.Barrier(2, timeout=60), threading.Event()
    real_upgrade, errors = review_db.upgrade, {}

    def upgrade(engine):   # both schemas made before either is linked; the second links once the first is done
        real_upgrade(engine)
        if engine.url.database.endswith(".creating"):
            made.wait()
            if threading.current_thread().name == "second":
                assert first_done.wait(60)

    monkeypatch.setattr(review_db, "upgrade", upgrade)

    def create(name):
        try:
            review_db._create_sqlite_whole(path)
        except Exception as exc:   # noqa: BLE001  (reported below, with its thread)
            errors[name] = exc
        finally:
            if name == "first":
                first_done.set()

    threads = [threading.Thread(target=create, args=(name,), name=name) for name in ("first", "second")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors, errors
    assert review_db.holds_review_database(path)
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(("-wal", "-shm"))) == ["out.review.sqlite"]
