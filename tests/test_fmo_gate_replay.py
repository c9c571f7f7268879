"""``benchmarks/fmo_gate_replay.py capture`` with ``--set``: the captured product is the one
``validate_gating.py --set`` scores (issue #13's heavy-binding blocks replayed offline)."""
from __future__ import annotations

import pickle
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import fmo_gate_replay  # noqa: E402
import validate_gating as vg  # noqa: E402


def test_capture_draws_the_set_phenomena_as_validate_gating(tmp_path):
    seed = 151641
    fmo_gate_replay.main(["capture", "--first-seed", str(seed), "--products", "1", "--events", "3000",
                          "--out", str(tmp_path), "--set", "pd1_binding=150-300", "--set", "pd1_binding_sd=0.6-0.8"])
    with open(tmp_path / f"{seed}.pkl", "rb") as fh:
        truth = pickle.load(fh)["truth"]
    # the value validate_gating.set_phenomena draws for this seed: its own stream per settable name
    wanted = float(np.random.default_rng([seed, vg.SETTABLE.index("pd1_binding")]).uniform(150.0, 300.0))
    assert 150.0 <= truth["phen_nsb_PD1"] <= 300.0
    assert abs(truth["phen_nsb_PD1"] - wanted) < 1e-9
