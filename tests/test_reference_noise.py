"""The ideal-FMO reference's own sampling SD (``benchmarks/reference_noise.py``) and its place in
``benchmarks/validate_gating.py``'s summary (issue #13: is a PD1/FoxP3 miss the gate's or the yardstick's?)."""
from __future__ import annotations

import sys
from pathlib import Path
from statistics import NormalDist

import numpy as np
import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import pd1_reference_noise as prn  # noqa: E402
import reference_noise as rn  # noqa: E402
import validate_gating as vg  # noqa: E402

from tilpheno.simulate.cohort import simulate_product  # noqa: E402
from tilpheno.simulate.truth import FMO_PERCENTILE  # noqa: E402


def test_percentile_cut_sd_is_the_spread_of_the_reference_over_redrawn_samples():
    """Negatives N(0, 1) (3,000) and positives N(2.4, 0.6) (600) straddling the 99.5th percentile
    cut z = 2.576: the % above each sample's own cut minus the % above the population cut, over
    2,000 drawn samples, has an SD that the estimator (mean over 200 samples) and the delta method
    (binomial SD of the cut times the parent's density at the population cut, exact normal densities)
    both match within 10 %."""
    rng = np.random.default_rng(148301)
    n_neg, n_pos, q = 3000, 600, 1 - FMO_PERCENTILE / 100
    negatives, positives = NormalDist(0, 1), NormalDist(2.4, 0.6)
    cut = negatives.inv_cdf(1 - q)
    diffs, estimates = [], []
    for rep in range(2000):
        values = np.concatenate([rng.normal(0, 1, n_neg), rng.normal(2.4, 0.6, n_pos)])
        negative = np.arange(values.size) < n_neg
        parent = np.ones(values.size, bool)
        own = np.percentile(values[negative], FMO_PERCENTILE)
        diffs.append(100 * (np.count_nonzero(values > own) - np.count_nonzero(values > cut)) / values.size)
        if rep < 200:
            estimates.append(rn.percentile_cut_sd(values, parent, negative, parent))
    spread = float(np.std(diffs, ddof=1))
    delta = 100 * np.sqrt(q * (1 - q) / n_neg) * (n_neg + n_pos * positives.pdf(cut) / negatives.pdf(cut)) / (n_neg + n_pos)
    assert float(np.mean(estimates)) == pytest.approx(spread, rel=0.10)
    assert delta == pytest.approx(spread, rel=0.10)


def test_reference_parents_are_the_truths():
    """The parents, negatives and denominators the SD is taken on are the ones the simulator's
    reference uses: the % above the 99.5th percentile of their negatives is ``truth['ref_...']``
    exactly (a tiny 3,000-event product of a development seed)."""
    product = simulate_product("V148303", 148303, 3000, phenomena=True)
    surface, treg = product.tube("surface", "stain").data, product.tube("treg", "stain").data
    spec = rn.reference_parents(surface, treg)
    assert set(spec) == set(vg.FMO_GATED + vg.EXTRA_FMO_GATED)
    for variable, (values, parent, negative, denominator) in spec.items():
        own = np.percentile(values[parent & negative], FMO_PERCENTILE)
        percent = 100 * np.count_nonzero(parent & (values > own)) / np.count_nonzero(denominator)
        assert percent == pytest.approx(product.truth[f"ref_{variable}"], abs=1e-9), variable
    sds = rn.reference_sampling_sd(surface, treg)
    assert all(0 < sd < 5 for sd in sds.values()), sds


@pytest.mark.slow
def test_reference_sampling_sd_matches_the_spread_over_redrawn_tubes():
    """On a simulated 20,000-event product (seed 148302): the PD1 gates' SD averaged over 20
    re-drawn surface tubes matches ``pd1_reference_noise.reference_sd`` (the SD over 80 other
    re-drawn tubes of the % above each tube's own cut minus the % above the population cut of two
    200,000-event tubes) within 20 % (the latter's own sampling error is about 8 %)."""
    seed, events = 148302, 20000
    product = simulate_product(f"V{seed}", seed, events, phenomena=True)
    population = {g: c for g, (c, _) in prn.population_cuts(product, seed, 2, 200000).items()}
    spread = prn.reference_sd(product, seed, population, 80, events)
    estimates: dict[str, list[float]] = {g: [] for g in spread}
    for rep in range(20):
        tube = prn.resimulated_tube(product, seed, 3, rep, events)
        values, negative = rn.pd1_values(tube), ~tube.labels["pd1"]
        for gate, parent in rn.pd1_parents(tube).items():
            estimates[gate].append(rn.percentile_cut_sd(values, parent, negative, parent))
    for gate, sd in spread.items():
        assert float(np.mean(estimates[gate])) == pytest.approx(sd, rel=0.20), gate


def table(errors: dict[str, float], sds: dict[str, float] | None) -> pd.DataFrame:
    """A one-product ``errors.csv`` table: these errors (others 0), no flags; with ``ref_sd_`` columns if ``sds``."""
    row: dict[str, object] = {v: errors.get(v, 0.0) for v in vg.ALL_VARIABLES}
    row.update({f"flag_{v}": False for v in vg.ALL_VARIABLES})
    row["review_flags"] = ""
    if sds is not None:
        row.update({f"ref_sd_{v}": sds.get(v, 0.1) for v in vg.FMO_GATED + vg.EXTRA_FMO_GATED})
    return pd.DataFrame([row], index=pd.Index(["V1"], name="product_id"))


def test_yardstick_line_leaves_the_counts_alone(capsys):
    """A CD4+PD1+ miss of -1.97 with a reference SD of 2.0 (V148159's) is explained, a FoxP3 miss of
    2.5 with SD 0.5 is not; the 2x2 counts and the error table are those of the table without the
    SD columns, and the new line stands apart."""
    errors = {"cd4pd1_pct_of_cd4": -1.97, "cd4foxp3_pct_of_cd4": 2.5}
    with_sd = table(errors, {"cd4pd1_pct_of_cd4": 2.0, "cd4foxp3_pct_of_cd4": 0.5})
    noise = vg.yardstick_noise(with_sd)
    assert noise.set_index("variable")["explained"].to_dict() == {"cd4foxp3_pct_of_cd4": False, "cd4pd1_pct_of_cd4": True}
    variables = list(vg.ALL_VARIABLES)
    assert vg.two_by_two(with_sd, variables) == vg.two_by_two(table(errors, None), variables)
    vg.print_tables(table(errors, None), "t")
    before = capsys.readouterr().out
    vg.print_tables(with_sd, "t")
    after = capsys.readouterr().out
    assert after.startswith(before)
    assert "1 of 2 explained" in after[len(before):]
