"""Review, correct, sign and release processed products in the browser (``tilpheno serve OUT``).

Layers (each module one job, pointing one way):

* ``models`` / ``db``: the SQLAlchemy schema (Alembic migrations in ``migrations/``); SQLite file
  beside OUT by default (``<OUT>.review.sqlite``), PostgreSQL by URL.
* ``auth``: users, roles (analyst, reviewer, admin), argon2 password hashes, lock-out, login
  sessions, CSRF tokens.
* ``audit``: the append-only, SHA-256-chained audit trail, its verification and CSV export.
* ``regate``: the science: a product's automatic gates (version 1, from re-running
  ``tilpheno.phenotype.analyze_product`` on the inputs named in ``run.json``), and the populations,
  phenotype and release of any gate set, recomputed from every event of the stained tubes.
* ``service``: gate-set versions (optimistic versioning), e-signatures, batch apply, exports.
* ``certificate``: the certificate of analysis PDF.
* ``web``: the Flask application (templates and static files are package data).
"""
