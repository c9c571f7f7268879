"""Review app at cohort scale: the product list (``GET /``) of a run of thousands of products.

Run by hand (not a test):

    .venv/bin/python benchmarks/bench_review_list.py --from OUT --products 2000 [--work /tmp/bench_list]

``OUT`` is any processed output folder (e.g. ``tilpheno process sample_fcs -o OUT``). Its products
are cloned into a fake run of ``--products`` products (tables copied with new ids, inputs
symlinked, so nothing is gated again), and a review database (SQLite) holds every product imported
as the app imports it (version 1 = the automatic gates, audited), a reviewer and an analyst with 50
assigned products. Then, in process (Flask test client, logged in), wall clock: ``GET /`` as the
reviewer (every product) and as the analyst, twice each, the list's page 40 (the last of the
reviewer's 2000 products at 50 a page; a tree without pages ignores it) and a search of ten
products, and one product page. Run it on two trees
(``PYTHONPATH=<tree>``) to compare code.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import time
from pathlib import Path

import pandas as pd

USERS = {"rita": ("reviewer", "rita-password-1"), "andy": ("analyst", "andy-password-1")}


def make_run(src: Path, dest: Path, n: int) -> dict[str, str]:
    """A fake run of ``n`` products in ``dest`` cloned from ``src``; returns clone id -> source id."""
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    inputs = dest.parent / (dest.name + "_inputs")
    shutil.rmtree(inputs, ignore_errors=True)
    inputs.mkdir()
    run = json.loads((src / "run.json").read_text())
    read = {"dtype": str, "keep_default_na": False}
    tables = {name: pd.read_csv(src / name, **read) for name in ("phenotypes.csv", "populations.csv", "qc.csv")}
    by_name = {Path(i["path"]).name: i for i in run["inputs"]}
    originals = sorted(tables["phenotypes.csv"]["product_id"])
    parts: dict[str, list] = {name: [] for name in tables}
    clone_of, new_inputs = {}, []
    for k in range(n):
        original, pid = originals[k % len(originals)], f"P{k:05d}"
        clone_of[pid] = original
        for name, frame in tables.items():
            part = frame[frame["product_id"] == original].copy()
            part["product_id"] = pid
            if "file" in part and name != "phenotypes.csv":
                part["file"] = [f"{pid}__{f}" if f else f for f in part["file"]]
            parts[name].append(part)
        for name in parts["populations.csv"][-1]["file"].unique():
            entry = by_name[name.split("__", 1)[1]]
            os.symlink(entry["path"], inputs / name)
            new_inputs.append({**entry, "path": str(inputs / name)})
    run["inputs"] = new_inputs
    for name, frames in parts.items():
        pd.concat(frames).to_csv(dest / name, index=False)
    (dest / "run.json").write_text(json.dumps(run))
    return clone_of


def fill_database(src: Path, dest: Path, url: str, clone_of: dict[str, str]) -> None:
    """Users, and every product imported as ``ReviewService.ensure_imported`` imports it."""
    from tilpheno.review import audit
    from tilpheno.review.auth import create_user
    from tilpheno.review.models import GateSetVersion, Product, ProductAssignment
    from tilpheno.review.regate import ReviewSource, gates_sha256
    from tilpheno.review.server import build_service
    from tilpheno.review.service import transaction

    service = build_service(dest, url)
    source = ReviewSource(src)
    automatic = {o: source.automatic(o) for o in set(clone_of.values())}

    def add(db):
        for name, (role, password) in USERS.items():
            create_user(db, name, name.capitalize(), role, password)
            audit.append(db, "bench", "user_added", after={"username": name, "role": role})
        for k, pid in enumerate(service.source.product_ids()):
            gates = json.loads(json.dumps(automatic[clone_of[pid]]))
            for tube in gates["tubes"].values():
                tube["file"] = f"{pid}__{tube['file']}"
            now, inputs, digest = service.clock.stamp(db), service.source.inputs_digest(pid), gates_sha256(gates)
            db.add(Product(product_id=pid, current_version=1, inputs_json=audit.canonical(inputs),
                           til_dose_cells=service.source.til_dose_cells(pid), imported_at=now))
            db.flush()
            db.add(GateSetVersion(product_id=pid, version=1, based_on=None, gates_json=audit.canonical(gates),
                                  gates_sha256=digest, source="automatic", reason="automatic gates of the run",
                                  created_by="tilpheno", created_at=now))
            audit.append(db, "system", "import_product", product_id=pid,
                         after={"version": 1, "gates_sha256": digest, "inputs": inputs})
            if k < 50:
                db.add(ProductAssignment(product_id=pid, username="andy", assigned_by="bench", assigned_at=now))
    transaction(service.factory, add)


def time_pages(dest: Path, url: str) -> None:
    from tilpheno.review.server import build_service
    from tilpheno.review.web import create_app

    app = create_app(build_service(dest, url))
    for name, (role, password) in USERS.items():
        client = app.test_client()
        token = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/login").text).group(1)
        assert client.post("/login", data={"username": name, "password": password, "csrf_token": token}).status_code == 302
        for attempt, url in ((1, "/"), (2, "/"), (1, "/?page=40"), (1, "/?q=P0199")):
            t0 = time.perf_counter()
            r = client.get(url)
            print(f"{role} GET {url} #{attempt}: HTTP {r.status_code}, {r.text.count('<tr') - 1} rows, "
                  f"{time.perf_counter() - t0:.2f} s")
        t0 = time.perf_counter()
        r = client.get("/products/P00001")
        print(f"{role} GET /products/P00001: HTTP {r.status_code}, {time.perf_counter() - t0:.2f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--from", dest="src", type=Path, required=True, help="a processed output folder")
    ap.add_argument("--products", type=int, default=2000)
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench_review_list"))
    args = ap.parse_args()
    dest = args.work / f"run{args.products}"
    url = f"sqlite:///{args.work / f'run{args.products}.review.sqlite'}"
    (args.work / f"run{args.products}.review.sqlite").unlink(missing_ok=True)
    t0 = time.perf_counter()
    fill_database(args.src, dest, url, make_run(args.src, dest, args.products))
    print(f"fake run of {args.products} products and its database: {time.perf_counter() - t0:.1f} s; "
          f"load average {os.getloadavg()[0]:.1f}")
    time_pages(dest, url)


if __name__ == "__main__":
    main()
