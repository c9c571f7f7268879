"""``tilpheno serve``'s background import: a product that cannot be imported is logged once, by name."""
from __future__ import annotations

import logging
from types import SimpleNamespace

from tilpheno.review.db import ReviewError
from tilpheno.review.server import import_all


class _Source:
    def product_ids(self):
        return ["P1", "P2"]


class _Service:
    """Imports P2; P1's re-gating fails with the review source's own message, which names the product."""
    def __init__(self):
        self.source, self.imported = _Source(), []

    def ensure_imported(self, pid):
        if pid == "P1":
            raise ReviewError("product P1: re-gating gives cd3_pct = nan, phenotypes.csv says 61.2")
        self.imported.append(pid)


def test_a_failed_import_names_its_product_once_and_the_others_go_on(caplog):
    service = _Service()
    with caplog.at_level(logging.WARNING, logger="tilpheno.review.server"):
        import_all(service)
    assert service.imported == ["P2"]
    messages = [r.getMessage() for r in caplog.records]
    assert messages == ["product P1: re-gating gives cd3_pct = nan, phenotypes.csv says 61.2"]


def test_a_message_without_its_product_gets_it(caplog):
    service = SimpleNamespace(source=_Source(), ensure_imported=lambda pid: (_ for _ in ()).throw(OSError("disk full")))
    with caplog.at_level(logging.WARNING, logger="tilpheno.review.server"):
        import_all(service)
    assert [r.getMessage() for r in caplog.records] == ["product P1: disk full", "product P2: disk full"]
