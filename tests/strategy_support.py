"""Helpers of the tests that run the bundled strategies on ``sample_fcs`` with one change: the
``cells`` gates' ``boundary`` (``placement.place_cells``)."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from tilpheno.gates.strategy import Strategy, default_strategy_paths, load_strategy

SAMPLE = Path(__file__).resolve().parents[1] / "sample_fcs"


def sample_rows(product_id: str) -> pd.DataFrame:
    """``sample_fcs/manifest.csv``'s rows of one product, with the files' full paths."""
    manifest = pd.read_csv(SAMPLE / "manifest.csv")
    return manifest[manifest["product_id"] == product_id].assign(file=lambda m: [str(SAMPLE / f) for f in m["file"]])


def bundled_strategies(cells_boundary: str) -> list[Strategy]:
    """The bundled strategies, every ``cells`` gate placed with ``cells_boundary``."""
    return [load_strategy(path).with_params("cells", boundary=cells_boundary) for path in default_strategy_paths()]
