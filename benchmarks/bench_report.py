"""Product report cost: render time and HTML size per product, against the gating it follows.

Gates each product of FOLDER once (as ``tilpheno process`` does, with the pipeline's plot
subsample), then times ``tilpheno.report.product.render_product`` on it (CPU seconds, median of --repeat runs,
one process, one core) and records the size of the HTML it returns. Prints a table and totals:
mean render seconds, mean report KiB, render time / gating time. Runs against whatever
``tilpheno`` is importable, so the same script measures two versions:

    PYTHONPATH=/path/to/old/tree python benchmarks/bench_report.py sample_fcs
    PYTHONPATH=$PWD              python benchmarks/bench_report.py sample_fcs

Only APIs that both the inline-PNG (before issue 16) and the inline-SVG reports have are used.
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", nargs="?", default="sample_fcs")
    parser.add_argument("--products", type=int, default=0, help="first N products only (0 = all)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--save", default="", help="folder to write the rendered reports into")
    args = parser.parse_args()

    from threadpoolctl import threadpool_limits

    import tilpheno
    from tilpheno import pipeline
    from tilpheno.pipeline import product
    from tilpheno.gates.strategy import default_strategy_paths, load_strategy
    from tilpheno.report.product import render_product
    from tilpheno.io.files import file_labels

    threadpool_limits(1)
    folder = Path(args.folder)
    manifest = folder / "manifest.csv"
    frame = pipeline.load_manifest(folder, manifest if manifest.is_file() else None)
    groups = pipeline.group_products(frame)[: args.products or None]
    strategies = tuple(load_strategy(p) for p in default_strategy_paths())
    sources = pipeline.strategy_sources(strategies)
    options = pipeline.ProcessOptions(make_reports=False)
    print(f"tilpheno {tilpheno.__version__} from {Path(tilpheno.__file__).parent}")
    print(f"{'product':<10} {'gate s':>8} {'render s':>9} {'KiB':>8}")
    gate_s, render_s, sizes = [], [], []
    for pid, rows in groups:
        job = pipeline.ProductJob(pid, rows, sources, options)
        t0 = time.process_time()
        kept, meta, _flags, _digests, checked = product._read_metadata(rows, pid, file_labels(rows["file"]))
        result = product._analyze(job, kept, checked)
        gate_s.append(time.process_time() - t0)
        outcome = pipeline.process_product(job)
        times = []
        for _ in range(args.repeat):
            t0 = time.process_time()
            html = render_product(outcome, result, meta, options, strategies)
            times.append(time.process_time() - t0)
        render_s.append(statistics.median(times))
        sizes.append(len(html.encode("utf-8")))
        if args.save:
            out = Path(args.save) / f"{pipeline.product_slug(pid)}.html"
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(html, encoding="utf-8")
        print(f"{pid:<10} {gate_s[-1]:8.2f} {render_s[-1]:9.3f} {sizes[-1] / 1024:8.1f}")
    n = len(groups)
    print(f"mean over {n} products: gating {sum(gate_s) / n:.2f} s, render {sum(render_s) / n:.3f} s, "
          f"report {sum(sizes) / n / 1024:.1f} KiB; render/gating = {sum(render_s) / sum(gate_s):.2f}")


if __name__ == "__main__":
    main()
