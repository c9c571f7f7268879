"""``benchmarks/bench_scale.py``: a benchmark leaves its inputs as they were (tput_52)."""
from __future__ import annotations

import csv
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_scale  # noqa: E402


def test_split_cohort_leaves_the_cohorts_files_as_they_were(tmp_path):
    """``split_cohort`` (``contention``, ``parallel``) hard-linked the cohort's files into its halves: each link
    changed the file's ctime and link count, and tilpheno's file identity (io.fcs: device, inode, size, mtime,
    ctime) then failed a product of any other run reading the cohort at that moment ('file changed since it was
    read'). The cohort's files keep their stat; the halves hold the same bytes, each with its products' rows."""
    cohort = tmp_path / "cohort"
    cohort.mkdir()
    rows = [{"file": f"TIL{p}_surface_{role}.fcs", "product_id": f"TIL{p}", "tube": "surface", "role": role,
             "fmo_marker": "PD1" if role == "fmo" else ""} for p in ("001", "002", "003") for role in ("stain", "fmo")]
    for i, r in enumerate(rows):
        (cohort / r["file"]).write_bytes(bytes([i]) * (100 + i))
    with open(cohort / "manifest.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)

    def stats() -> dict[str, tuple[int, ...]]:
        return {f.name: (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_nlink)
                for f in sorted(cohort.iterdir()) for st in [os.stat(f)]}

    before = stats()
    halves = bench_scale.split_cohort(cohort, tmp_path / "work")
    assert stats() == before
    assert all(nlink == 1 for *_, nlink in before.values())
    seen = []
    for half in halves:
        with open(half / "manifest.csv", newline="") as fh:
            mine = list(csv.DictReader(fh))
        assert {f.name for f in half.iterdir()} == {r["file"] for r in mine} | {"manifest.csv"}
        for r in mine:
            assert not (half / r["file"]).is_symlink()
            assert (half / r["file"]).read_bytes() == (cohort / r["file"]).read_bytes()
        seen += mine
    assert sorted(seen, key=lambda r: r["file"]) == sorted(rows, key=lambda r: r["file"])


def test_split_line_is_head_plus_the_products_shared_out_plus_tail():
    """``timeline``'s bound for a finer split (stop 62): stop 58's quiet ``--jobs 2`` timeline (head 0.9 s, products
    6.0 s summed over 2 workers, tail 0.1 s, 4.1 s wall) could end at 0.9 + 3.0 + 0.1 = 4.0 s at best."""
    line = bench_scale.split_line(0.9, 6.0, 0.1, 2, 4.1)
    assert "= 4.00 s, 0.10 s less than this run's 4.10 s" in line
    assert "= 6.00 s, 0.00 s less" in bench_scale.split_line(0.5, 5.4, 0.1, 1, 6.0)


def test_stage_table_reads_each_stage_alone_and_beside_and_its_share_of_the_difference():
    """``stages`` (stop 63): a run's samples summed by stage per sampled product run (the process's first product run
    left out), medians over the runs, the stage's ratio and its share of the product's difference. Two runs alone
    and two beside, by hand: placement 0.50 s a product alone and 0.56 beside (1.12x, +60 ms of the product's +100
    ms: +60 %), transform 0.10 / 0.14 (1.40x, +40 %); the product 1.0 / 1.1 s, 1.100x."""
    assert bench_scale.stage_of("gates/placement.py:loss") == "gate placement"
    assert bench_scale.stage_of("gates/geometry.py:contains") == "gate membership"
    assert bench_scale.stage_of("io/fcs.py:hexdigest") == "SHA-256 of the files"
    assert bench_scale.stage_of("io/fcs.py:_decode_block") == "read"
    assert bench_scale.stage_of("pipeline/product.py:_render") == "other (pipeline, libraries' own Python)"

    def run(placement: float, transform: float, product: float) -> dict:
        # three product runs, the first (not sampled) of 9 s; the samples' sums cover the two sampled ones
        return {"stages": {"gates/placement.py:loss": [placement, 4], "quantiles.py:_select": [placement, 0],
                           "transforms.py:inverse": [2 * transform, 10]},
                "products": [[9.0, 30000], [product, 7], [product, 9]]}

    alone = [bench_scale.per_product(run(0.5, 0.1, 1.0)), bench_scale.per_product(run(0.5, 0.1, 1.0))]
    beside = [bench_scale.per_product(run(0.56, 0.14, 1.1)), bench_scale.per_product(run(0.56, 0.14, 1.1))]
    assert alone[0] == {"gate placement": 0.5, "transform (and inverse)": 0.1, "product": 1.0, "faults": 8.0}
    table = bench_scale.stage_table(alone, beside).splitlines()
    assert table[2] == "| gate placement | 500.0 | 560.0 | 1.12 | +60% |"
    assert table[3] == "| transform (and inverse) | 100.0 | 140.0 | 1.40 | +40% |"
    assert table[4].startswith("| **product (CPU s, medians of 2 / 2 runs)** | 1.000 | 1.100 | **1.100** | minor faults 8 / 8 |")
