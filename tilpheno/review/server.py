"""``tilpheno serve``: open the output folder and the database, import products, run the web app."""
from __future__ import annotations

import logging
import threading
from pathlib import Path

from tilpheno.review.audit import DATABASE_CLOCK, Clock
from tilpheno.review.db import default_db_url, open_database
from tilpheno.review.regate import ReviewSource
from tilpheno.review.service import ReviewService

log = logging.getLogger(__name__)


def build_service(out_dir: str | Path, db_url: str | None = None, inputs_dir: str | Path | None = None,
                  source: ReviewSource | None = None, clock: Clock = DATABASE_CLOCK) -> ReviewService:
    """The review service of OUT on ``db_url`` (default: the SQLite file beside OUT); ``source`` reuses a loaded OUT;
    ``clock``: what it records times by (:class:`~tilpheno.review.audit.Clock`)."""
    source = source or ReviewSource(out_dir, inputs_dir)
    return ReviewService(source, open_database(db_url or default_db_url(out_dir), clock), clock)


def import_all(service: ReviewService) -> None:
    """Make version 1 (automatic gates) of every product not yet in the database; log failures."""
    for pid in service.source.product_ids():
        try:
            service.ensure_imported(pid)
        except Exception as exc:  # one product's missing input must not stop the others
            log.warning("%s", named_once(pid, str(exc)))


def named_once(product_id: str, message: str) -> str:
    """``message`` led by ``product <product_id>: `` once (the review errors already name their product)."""
    lead = f"product {product_id}: "
    return message if message.startswith(lead) else lead + message


def serve(service: ReviewService, host: str = "127.0.0.1", port: int = 8765, threads: int = 8) -> None:
    """Serve the review app with waitress (a production WSGI server) until interrupted."""
    from waitress import serve as waitress_serve

    from tilpheno.review.web import create_app

    service.write_due_refusals(replay=True)   # refusals killed servers held; windows over while no server ran
    threading.Thread(target=import_all, args=(service,), daemon=True, name="import-products").start()
    try:
        waitress_serve(create_app(service), host=host, port=port, threads=threads, ident="tilpheno")
    finally:
        service.write_due_refusals()

