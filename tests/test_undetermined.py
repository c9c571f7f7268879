"""An undetermined gate (one population, no FMO or unstained control of its marker: issue 13 item 2)
reports no number: its percentages and those below it are blank with the reason, in phenotypes.csv,
populations.csv, qc.csv, the report, the release and the review app's re-gating."""
from __future__ import annotations

import math
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from fmo_support import HELD_FMO_STRATEGY, fmo_toy, toy_tube, treg_parent
from undetermined_support import FILE, RELEASE
from tilpheno.cli import app
from tilpheno.gates import checks


def _process(folder: Path, study: Path, out: Path, reports: str = "none") -> str:
    result = CliRunner().invoke(app, ["process", str(folder), "--study", str(study / "study.yaml"), "--manifest",
                                      str(study / "manifest.csv"), "-o", str(out), "--reports", reports])
    assert result.exit_code == 0, result.output
    return " ".join(result.output.split())


@pytest.fixture(scope="module")
def drafted(tmp_path_factory):
    """100715.fcs (a FACSAria file, no FMO, no unstained control) drafted by new-study, its release
    spec with a criterion on CD4+ of CD3+ (both gates undetermined), processed with its report."""
    tmp = tmp_path_factory.mktemp("undetermined")
    folder = tmp / "fcs"
    folder.mkdir()
    shutil.copy(FILE, folder / FILE.name)
    study = tmp / "study"
    assert CliRunner().invoke(app, ["new-study", str(folder), "-o", str(study)]).exit_code == 0
    (study / "release.yaml").write_text(RELEASE)
    said = _process(folder, study, tmp / "out", "now")
    return folder, study, tmp / "out", said


def test_an_undetermined_gate_reports_no_number(drafted):
    """Stop 46 held such a gate as positive and reported its share as if measured (CD4+ 97.6 % and
    CD8+ 93.8 % of CD3+, impossible together) -> every percentage resting on it (its own, those below
    it, a variable with it in its numerator or denominator) is blank, its event count kept; qc.csv
    says why and which variables (code undetermined); a criterion on such a variable is 'not
    evaluable' for that reason, and so is the release. A gate with two populations keeps its number:
    CCR5+ % of lymph = its count over lymph's (populations.csv, independent of the variable's code)."""
    _, _, out, said = drafted
    row = pd.read_csv(out / "phenotypes.csv").iloc[0]
    pops = pd.read_csv(out / "populations.csv").set_index("population")
    for variable in ("cd3_pct_of_lymph", "cd4_pct_of_cd3", "cd8_pct_of_cd3", "cd127_pct_of_cd4"):
        assert math.isnan(row[variable]), (variable, row[variable])
    for population in ("CD3+", "CD4+", "CD8+", "CD127+"):
        assert math.isnan(pops.loc[population, "pct_of_parent"]) and math.isnan(pops.loc[population, "pct_of_live_lymph"])
    assert row["ccr5_pct_of_lymph"] == pytest.approx(100 * pops.loc["CCR5+", "count"] / pops.loc["lymph", "count"], abs=1e-9)
    assert pops.loc["lymph", "pct_of_parent"] == pytest.approx(100 * pops.loc["lymph", "count"] / pops.loc["singlets", "count"])
    qc = pd.read_csv(out / "qc.csv").query("code == 'undetermined'").set_index("gate")
    assert {"CD3+", "CD4+", "CD8+"} <= set(qc.index) and "CCR5+" not in qc.index
    message = qc.loc["CD4+", "message"]
    assert "no FMO or unstained control of CD4" in message and "cd4_pct_of_cd3, cd127_pct_of_cd4, " in message
    assert "n_cd4pos_tube025, n_cd127pos_tube025 left blank (NA), as are the counts and medians of CD4+" in message
    assert not qc["needs_review"].any()   # the gate's no_second_peak holds release
    assert row["release_status"] == "not evaluable"
    assert "not evaluable 1 (1 undetermined gate, no FMO or unstained control)" in said, said


def test_an_undetermined_gates_counts_and_medians_are_blank(drafted):
    """Stop 47 blanked the percentages but kept the event counts and medians of an undetermined
    population and those within it (n_cd4pos_tube025 52983 of 100715.fcs's 65016 events, the CD4+
    row's counts and medians in populations.csv), so a release criterion on the count was tested as
    if measured -> blank (NA) with the percentages, and the criterion 'not evaluable (undetermined:
    ...)'. A count or median of a population resting on no undetermined gate keeps its value: the
    lymphocytes' count is its mask's events (the scatter gates', independent of the markers), the
    CCR5+ count its share of it."""
    from tilpheno.release import NOT_EVALUABLE
    from tilpheno.review.regate import ReviewSource, recompute

    _, _, out, _ = drafted
    row = pd.read_csv(out / "phenotypes.csv").iloc[0]
    pops = pd.read_csv(out / "populations.csv").set_index("population")
    medians = [c for c in pops.columns if c.startswith("median_")]
    blank = {"CD3+", "CD4+", "CD8+", "CD127+"}
    for population in blank:
        assert pops.loc[population, [*medians, "count"]].isna().all(), population
        column = f"n_{population[:-1].lower()}pos_tube025"
        assert math.isnan(row[column]), column
    for population in ("lymph", "CCR5+"):
        assert pops.loc[population, [*medians, "count"]].notna().all(), population
    assert row["n_lymph_tube025"] == pops.loc["lymph", "count"]
    assert row["ccr5_pct_of_lymph"] == pytest.approx(100 * row["n_ccr5pos_tube025"] / row["n_lymph_tube025"], abs=1e-9)
    assert row["n_events_tube025"] == 65016
    html = next(out.glob("products/*/report.html")).read_text()
    text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", re.sub(r"<svg.*?</svg>", "", html, flags=re.S)))
    criteria = text.split("Release criteria")[1].split("QC flags")[0]
    assert re.search(r"CD4 T cells counted .*?not evaluable \(undetermined: CD3\+, CD4\+, no FMO or unstained control\)",
                     criteria), criteria
    counts = text.split("Event counts and status")[1].split("Release criteria")[0]
    assert "n CD4+ (tube025) undetermined: no FMO or unstained control (CD3+, CD4+)" in counts, counts[:1500]
    assert "n lymph (tube025) 61708" in counts and f"n CCR5+ (tube025) {int(row['n_ccr5pos_tube025'])}" in counts
    source = ReviewSource(out)   # the review app's re-gating of the gates as held: the same blanks
    held = recompute(source, str(row["product_id"]), source.automatic(str(row["product_id"])))
    [criterion] = [r for r in held.release if r.criterion.column == "n_cd4pos_tube025"]
    assert criterion.outcome == NOT_EVALUABLE and criterion.undetermined == ("CD3+", "CD4+")
    assert math.isnan(held.phenotype["n_cd4pos_tube025"]) and held.phenotype["n_lymph_tube025"] == row["n_lymph_tube025"]
    assert pd.isna(held.populations["tube025"].set_index("population").loc["CD4+", "count"])
    subsets = text.split("every population on all")[1]
    assert re.search(r"CD4\+ CD3\+ undetermined: no FMO or unstained control \(CD3\+, CD4\+\)", subsets), subsets[:2000]
    assert re.search(r"CCR5\+ lymph \d+ [\d.]+ [\d.]+ [\d.]+", subsets), subsets[:2000]


def test_the_report_says_undetermined_where_the_number_was(drafted):
    """The report's study variables, release criteria and subset table say 'undetermined: no FMO or
    unstained control' with the gates, where a blank or a number stood; a gate plot's label says
    '% not determined', never 'nan%'."""
    _, _, out, _ = drafted
    html = next(out.glob("products/*/report.html")).read_text()
    text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", re.sub(r"<svg.*?</svg>", "", html, flags=re.S)))
    variables = text.split("Study variables")[1].split("Release criteria")[0]
    assert "CD4+ % CD3+ undetermined: no FMO or unstained control (CD3+, CD4+)" in variables, variables[:600]
    release = text.split("Release criteria")[1].split("QC flags")[0]
    assert "not evaluable (undetermined: CD3+, CD4+, no FMO or unstained control)" in release, release
    subsets = text.split("every population on all")[1]
    assert re.search(r"CD4\+ CD3\+ undetermined: no FMO or unstained control \(CD3\+, CD4\+\) "
                     r"undetermined: no FMO or unstained control \(CD3\+, CD4\+\) "
                     r"undetermined: no FMO or unstained control \(CD3\+, CD4\+\) undetermined undetermined", subsets), subsets[:2000]
    assert "nan%" not in html and "CD4+ % not determined" in html


def test_a_dose_names_its_undetermined_gates_in_the_order_its_criterion_does(drafted, tmp_path):
    """A dose rests on its base's gates and its variable's. The report's study variables named a dose's
    undetermined gates base first, then the variable's (a Ki67+ dose on the CD4+ dose: 'CD3+, CD4+,
    Ki67+'), while its release criterion, in the same report, named them in gating order ('Ki67+, CD3+,
    CD4+': the drafted strategy gates Ki67+ before CD3+) -> both name them in the strategy's order."""
    import yaml

    folder, study, _, _ = drafted
    dosed = tmp_path / "study"
    shutil.copytree(study, dosed)
    with open(dosed / "study.yaml", "a") as fh:
        fh.write("doses:\n  cd3_dose_cells: {base: dose, variable: cd3_pct_of_lymph}\n"
                 "  cd4_dose_cells: {base: cd3_dose_cells, variable: cd4_pct_of_cd3}\n"
                 "  ki67_dose_cells: {base: cd4_dose_cells, variable: ki67_pct_of_lymph}\n")
    (dosed / "release.yaml").write_text(RELEASE + "  - {name: Ki67 dose, column: ki67_dose_cells, op: \">\", limit: 10}\n")
    _process(folder, dosed, tmp_path / "out", "now")
    populations = [p["name"] for p in yaml.safe_load((dosed / "tube025.yaml").read_text())["populations"]]
    order = [p for p in populations if p in ("CD3+", "CD4+", "Ki67+")]
    assert order.index("Ki67+") < order.index("CD3+"), order   # the variable's gate comes first: the orders differ
    html = next((tmp_path / "out").glob("products/*/report.html")).read_text()
    text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", re.sub(r"<svg.*?</svg>", "", html, flags=re.S)))
    variables = text.split("Study variables")[1].split("Release criteria")[0]
    release = text.split("Release criteria")[1].split("QC flags")[0]
    assert f"Ki67 dose ki67_dose_cells &gt; 10 % not evaluable (undetermined: {', '.join(order)}," in release, release
    assert f"Ki67+ dose undetermined: no FMO or unstained control ({', '.join(order)})" in variables, variables[-1500:]


def test_a_stated_side_reports_the_number(drafted, tmp_path):
    """one_population: positive on CD3 and CD4 (the lab states the side): the gates are decided and
    cd4_pct_of_cd3 is reported, the counts' ratio; the release has its value."""
    folder, study, _, _ = drafted
    stated = tmp_path / "study"
    shutil.copytree(study, stated)
    strategy = stated / "tube025.yaml"
    text = strategy.read_text()
    for marker in ("CD3", "CD4"):
        text = text.replace(f"dims: [{marker}], method: valley, params: {{keep: high}}",
                            f"dims: [{marker}], method: valley, params: {{keep: high, one_population: positive}}", 1)
    strategy.write_text(text)
    _process(folder, stated, tmp_path / "out")
    row = pd.read_csv(tmp_path / "out" / "phenotypes.csv").iloc[0]
    assert row["cd4_pct_of_cd3"] == pytest.approx(100 * row["n_cd4pos_tube025"] / row["n_cd3pos_tube025"], abs=1e-9)
    assert math.isnan(row["cd8_pct_of_cd3"])   # CD8 still undetermined
    gates = set(pd.read_csv(tmp_path / "out" / "qc.csv").query("code == 'undetermined'")["gate"])
    assert "CD4+" not in gates and "CD3+" not in gates and "CD8+" in gates


def test_a_reviewers_cut_determines_the_gate(drafted):
    """The review app's re-gating keeps the run's blanks while the gates are as held (the automatic
    gate set records them, undetermined), its release criterion 'not evaluable' for that reason;
    once a reviewer moves CD3+ and CD4+ to cuts of their own, cd4_pct_of_cd3 has a value: the share
    of the moved gates' events counted on the stained file's transformed data (lymph's mask the
    re-gating's, its gate unchanged), and the criterion is tested. CD8+, still as held, stays blank."""
    from tilpheno.pipeline.release import UNDETERMINED, not_evaluable_reason
    from tilpheno.release import PASS
    from tilpheno.review.regate import ReviewSource, recompute, validate_gate_set

    _, _, out, _ = drafted
    source = ReviewSource(out)
    pid = str(pd.read_csv(out / "phenotypes.csv", dtype={"product_id": str})["product_id"].iloc[0])
    automatic = source.automatic(pid)
    held = recompute(source, pid, automatic)
    assert math.isnan(held.phenotype["cd4_pct_of_cd3"]) and held.release_status == "not evaluable"
    [criterion] = [r for r in held.release if r.criterion.column == "cd4_pct_of_cd3"]
    assert criterion.undetermined == ("CD3+", "CD4+") and not_evaluable_reason(held.release) == UNDETERMINED
    assert math.isnan(held.populations["tube025"].set_index("population").loc["CD4+", "pct_of_parent"])
    tube = source.stained(pid)["tube025"].tube
    cuts = {"CD3+": float(np.quantile(tube.data["CD3"], 0.3)), "CD4+": float(np.quantile(tube.data["CD4"], 0.5))}
    moved = validate_gate_set(automatic, {"tubes": {"tube025": {"gates": {
        p: {"type": "range", "dim": p[:-1], "low": c, "high": None} for p, c in cuts.items()}}}}, source.stained(pid))
    decided = recompute(source, pid, moved)
    lymph = decided.masks["tube025"]["lymph"]
    cd3 = lymph & (tube.data["CD3"] > cuts["CD3+"])
    cd4 = cd3 & (tube.data["CD4"] > cuts["CD4+"])
    assert decided.phenotype["cd4_pct_of_cd3"] == pytest.approx(100 * cd4.sum() / cd3.sum(), abs=1e-9)
    assert decided.phenotype["cd3_pct_of_lymph"] == pytest.approx(100 * cd3.sum() / lymph.sum(), abs=1e-9)
    assert math.isnan(decided.phenotype["cd8_pct_of_cd3"])
    [criterion] = [r for r in decided.release if r.criterion.column == "cd4_pct_of_cd3"]
    assert criterion.outcome == PASS and not criterion.undetermined


def test_a_gate_set_sent_back_whole_keeps_the_automatic_gates(drafted):
    """The review page sends every gate of its draft; the automatic singlets polygon of 100715.fcs has a
    corner at 600081 on FSC-H, beyond the bounds a moved gate must keep to (-262207 to 524414), so any
    save of that product was refused ('tube025/singlets.vertices[2][1]: 600081 is outside the allowed
    range'), whatever gate was moved -> a gate sent back as the base has it is kept unchecked; a moved
    one is still checked, and still refused there."""
    from tilpheno.review.regate import GateSetError, ReviewSource, validate_gate_set

    _, _, out, _ = drafted
    source = ReviewSource(out)
    pid = str(pd.read_csv(out / "phenotypes.csv", dtype={"product_id": str})["product_id"].iloc[0])
    automatic, stained = source.automatic(pid), source.stained(pid)
    gates = json_copy(automatic["tubes"]["tube025"]["gates"])
    low, high = stained["tube025"].bounds[gates["singlets"]["dims"][1]]
    assert any(not low <= y <= high for _, y in gates["singlets"]["vertices"]), gates["singlets"]   # as the run placed it
    gates["CD3+"]["low"] += 0.05
    moved = validate_gate_set(automatic, {"tubes": {"tube025": {"gates": gates}}}, stained)
    assert moved["tubes"]["tube025"]["gates"]["CD3+"]["low"] == gates["CD3+"]["low"]
    assert moved["tubes"]["tube025"]["gates"]["singlets"] == automatic["tubes"]["tube025"]["gates"]["singlets"]
    gates["singlets"]["vertices"][0] = [gates["singlets"]["vertices"][0][0] + 1, gates["singlets"]["vertices"][0][1]]
    with pytest.raises(GateSetError, match=r"singlets\.vertices\[2\]\[1\]: .* is outside the allowed range"):
        validate_gate_set(automatic, {"tubes": {"tube025": {"gates": gates}}}, stained)


def json_copy(value):
    import json

    return json.loads(json.dumps(value))


def test_a_reviewers_decision_is_checked(drafted):
    """The review app's decision on an undetermined gate (gate set ``decided``): 'positive' accepts the
    held call, the cut unchanged, and the numbers resting on that gate alone appear (cd3_pct_of_lymph,
    the held CD3+ gate's share of lymph's events counted here); 'undecided' withdraws it; a decision on a
    gate that is not undetermined, or another word, is refused in one line naming the field."""
    from tilpheno.review.regate import GateSetError, ReviewSource, evaluate, recompute, validate_gate_set

    _, _, out, _ = drafted
    source = ReviewSource(out)
    pid = str(pd.read_csv(out / "phenotypes.csv", dtype={"product_id": str})["product_id"].iloc[0])
    automatic, stained = source.automatic(pid), source.stained(pid)
    accepted = validate_gate_set(automatic, {"tubes": {"tube025": {"gates": {}, "decided": {"CD3+": "positive"}}}}, stained)
    assert accepted["tubes"]["tube025"]["decided"] == {"CD3+": "positive"}
    assert accepted["tubes"]["tube025"]["gates"] == automatic["tubes"]["tube025"]["gates"]
    masks = evaluate(stained["tube025"].strategy, stained["tube025"].tube, automatic["tubes"]["tube025"]["gates"])
    res = recompute(source, pid, accepted)
    assert res.phenotype["cd3_pct_of_lymph"] == pytest.approx(100 * masks["CD3+"].sum() / masks["lymph"].sum(), abs=1e-9)
    assert math.isnan(res.phenotype["cd4_pct_of_cd3"])   # CD4+ still undetermined
    withdrawn = validate_gate_set(accepted, {"tubes": {"tube025": {"gates": {}, "decided": {"CD3+": "undecided"}}}}, stained)
    assert "decided" not in withdrawn["tubes"]["tube025"]
    with pytest.raises(GateSetError, match=r"^gates\.tube025\.decided: 'CCR5\+' is no undetermined gate of this product"):
        validate_gate_set(automatic, {"tubes": {"tube025": {"gates": {}, "decided": {"CCR5+": "positive"}}}}, stained)
    with pytest.raises(GateSetError, match=r"^gates\.tube025\.decided\.CD3\+: 'maybe' must be one of"):
        validate_gate_set(automatic, {"tubes": {"tube025": {"gates": {}, "decided": {"CD3+": "maybe"}}}}, stained)


def test_a_reviewer_judges_the_one_population_negative(drafted, tmp_path):
    """A reviewer who judged an undetermined gate's one population negative (CD19 in a T-cell product) had
    no decision for it: only the 'negative call' candidate, a cut moved like any other, the gate set not
    saying why -> decided: {CD19+: negative}, the gate at the negative call's cut, so that the numbers are
    those of the gate saved: cd19_pct_of_lymph is what the run reports when the strategy states
    one_population: negative for CD19 (processed here). The change names the gate and the decision;
    withdrawn, the gate is as held and undetermined again; with a cut of the reviewer's own it is refused."""
    from tilpheno.review.regate import (GateSetError, ReviewSource, changed_gates, recompute, undetermined_in,
                                        validate_gate_set)

    folder, study, out, _ = drafted
    stated = tmp_path / "study"
    shutil.copytree(study, stated)
    strategy = stated / "tube025.yaml"
    old = "dims: [CD19], method: valley, params: {keep: high}"
    assert old in strategy.read_text()
    strategy.write_text(strategy.read_text().replace(old, "dims: [CD19], method: valley, params: {keep: high, one_population: negative}"))
    _process(folder, stated, tmp_path / "out")
    run = pd.read_csv(tmp_path / "out" / "phenotypes.csv").iloc[0]
    source = ReviewSource(out)
    pid = str(pd.read_csv(out / "phenotypes.csv", dtype={"product_id": str})["product_id"].iloc[0])
    automatic, stained = source.automatic(pid), source.stained(pid)
    calls = lambda: source.negative_calls(pid)   # noqa: E731
    judged = validate_gate_set(automatic, {"tubes": {"tube025": {"gates": {}, "decided": {"CD19+": "negative"}}}}, stained, calls)
    entry = judged["tubes"]["tube025"]
    assert entry["decided"] == {"CD19+": "negative"} and "CD19+" not in undetermined_in(entry)
    assert entry["gates"]["CD19+"]["low"] > automatic["tubes"]["tube025"]["gates"]["CD19+"]["low"]
    assert recompute(source, pid, judged).phenotype["cd19_pct_of_lymph"] == pytest.approx(run["cd19_pct_of_lymph"], abs=1e-9)
    assert math.isnan(pd.read_csv(out / "phenotypes.csv").iloc[0]["cd19_pct_of_lymph"])   # as held: undetermined
    assert set(changed_gates(automatic, judged)) == {"tube025/CD19+", "tube025/CD19+ decided"}
    withdrawn = validate_gate_set(judged, {"tubes": {"tube025": {"gates": {}, "decided": {"CD19+": "undecided"}}}}, stained, calls)
    assert withdrawn["tubes"]["tube025"] == automatic["tubes"]["tube025"] and "CD19+" in undetermined_in(withdrawn["tubes"]["tube025"])
    own = {**automatic["tubes"]["tube025"]["gates"]["CD19+"], "low": 0.5}
    refused = r"^gates\.tube025\.decided\.CD19\+: 'negative' keeps the negative call's cut, but the gate sent has a cut of its own"
    with pytest.raises(GateSetError, match=refused):   # one rule, one message (stop 50: was 'puts the cut at ...')
        validate_gate_set(automatic, {"tubes": {"tube025": {"gates": {"CD19+": own}, "decided": {"CD19+": "negative"}}}},
                          stained, calls)


def test_the_live_counts_leave_an_undetermined_gates_count_blank(drafted):
    """The review page's live table (counts_table) and GatingResult.summary gave an undetermined gate's
    event counts as measured (CD4+'s n, the held gate's events) where populations.csv leaves them blank
    -> None / NA with the gates they rest on (the reason the page shows); a count resting on no such gate
    is its mask's events (lymph: populations.csv's count)."""
    import tilpheno as tp
    from tilpheno.review.regate import ReviewSource, counts_table, evaluate, undetermined_in

    _, study, out, _ = drafted
    pops = pd.read_csv(out / "populations.csv").set_index("population")
    source = ReviewSource(out)
    pid = str(pd.read_csv(out / "phenotypes.csv", dtype={"product_id": str})["product_id"].iloc[0])
    entry, st = source.automatic(pid)["tubes"]["tube025"], source.stained(pid)["tube025"]
    rows = {r["population"]: r for r in counts_table(st.strategy, st.tube, evaluate(st.strategy, st.tube, entry["gates"]),
                                                      undetermined_in(entry))}
    assert (rows["CD4+"]["count"], rows["CD4+"]["pct_of_parent"], rows["CD4+"]["undetermined"]) == (None, None, ["CD3+", "CD4+"])
    assert rows["lymph"]["count"] == pops.loc["lymph", "count"] and rows["lymph"]["undetermined"] == []
    for population, row in rows.items():
        assert (row["count"] is None) == pd.isna(pops.loc[population, "count"]), population
    strategy = tp.GatingStrategy.from_yaml(study / "tube025.yaml")
    result = tp.gate_sample(strategy, tp.Sample.from_fcs(FILE, strategy))
    summary = result.summary.set_index("variable")
    cd4, ccr5 = summary.loc["cd4_pct_of_cd3"], summary.loc["ccr5_pct_of_lymph"]
    assert pd.isna(cd4["numerator_count"]) and pd.isna(cd4["denominator_count"]) and math.isnan(cd4["percent"])
    assert cd4["undetermined"] == "CD3+, CD4+"
    assert (ccr5["numerator_count"], ccr5["denominator_count"]) == (pops.loc["CCR5+", "count"], pops.loc["lymph", "count"])
    assert ccr5["undetermined"] == ""


def _process_chained(drafted, tmp_path: Path, below: str):
    """The drafted study with keep-low CD28lo (one population, held) > CD57lo added to its tube and
    ``below`` (gates under them, and ``variables:``) after, processed into ``tmp_path/out``."""
    folder, study, _, _ = drafted
    chained = tmp_path / "study"
    shutil.copytree(study, chained)
    strategy = chained / "tube025.yaml"
    strategy.write_text(strategy.read_text().replace("variables:\n", """\
  - {name: CD28lo, parent: lymph, dims: [CD28], method: valley, params: {keep: low}}
  - {name: CD57lo, parent: CD28lo, dims: [CD57], method: valley, params: {keep: low}}
""" + below, 1))
    return CliRunner().invoke(app, ["process", str(folder), "--study", str(chained / "study.yaml"), "--manifest",
                                    str(chained / "manifest.csv"), "-o", str(tmp_path / "out"), "--reports", "none"])


def test_a_gate_starved_below_undetermined_gates_quotes_no_held_count(drafted, tmp_path):
    """A gate that failed for too few events below undetermined gates quoted their held counts in its
    gate_failed (and product_failed) message ('only 1 events to place the gate on; CD57lo left 1 of the
    575 events of CD28lo'), counts no output reports -> 'too few', naming the gates the counts rest on;
    the threshold it missed is kept. (CD28lo and CD57lo: keep-low gates, one population each, held.)"""
    result = _process_chained(drafted, tmp_path, """\
  - {name: CD27x, parent: CD57lo, dims: [CD27], method: valley, params: {keep: high}}
variables:
  cd27x_pct_of_cd57lo: {numerator: CD27x, denominator: CD57lo}
""")
    assert result.exit_code == 1, result.output
    qc = pd.read_csv(tmp_path / "out" / "qc.csv")
    assert {"CD28lo", "CD57lo"} <= set(qc.query("code == 'undetermined'")["gate"])
    for code in ("gate_failed", "product_failed"):
        message = qc.query("code == @code")["message"].iloc[0]
        assert ("CD27x (CD27): density threshold: too few events to place the gate on (need >= 20); CD57lo left fewer than "
                "20 of the events of CD28lo; counts resting on CD28lo, CD57lo (undetermined: no FMO or unstained control) "
                "are not reported") in message, message
        assert not re.search(r"only \d+ events|left \d+ of", message), message


def test_a_gate_placed_below_undetermined_gates_quotes_no_held_count_in_its_flags(drafted, tmp_path):
    """CD57lo, placed on CD28lo's held events (fewer than 1000), was flagged few_events with CD28lo's
    held count ('the cut 0.046 was placed on only 575 events (< 1000)'), and the density-gate flags
    of gates below undetermined ones were sized from held masks ('size: moving the cut to ... changes
    cd4_pct_of_cd3 by 97.4 points'): counts no output reports -> 'fewer than 1000 events', and 'size:
    not measured', naming the gates they rest on. A gate on determined events keeps its size.
    CD127+'s cut_in_dense_region (placed within CD4+, within CD3+, both held) quoted the held parent's
    points ('0.6 points of the parent lie within 0.03 of it') -> none (stop 50). CD3+'s own flags were sized on
    its held % of lymph ('changes cd3_pct_of_lymph by 4.2 points') -> not quoted (undet_52), not sized (msgs_53)."""
    result = _process_chained(drafted, tmp_path, "variables:\n  cd57lo_pct_of_cd28lo: {numerator: CD57lo, denominator: CD28lo}\n")
    assert result.exit_code == 0, result.output
    qc = pd.read_csv(tmp_path / "out" / "qc.csv")
    assert {"CD28lo", "CD57lo"} <= set(qc.query("code == 'undetermined'")["gate"])
    few = qc.query("code == 'few_events'").set_index("gate")["message"]
    assert "CD57lo (CD57): the cut " in few["CD57lo"] and " was placed on fewer than 1000 events; " in few["CD57lo"], few
    held = "size: not measured, the percentages it moves rest on CD28lo (undetermined: no FMO or unstained control)"
    assert few["CD57lo"].endswith(held), few["CD57lo"]
    sized = qc[qc["code"].isin(["no_second_peak", "cut_in_dense_region", "few_events"])].set_index(["gate", "code"])["message"]
    for gate, code in (("CD57lo", "no_second_peak"), ("CD4+", "no_second_peak"), ("CD127+", "cut_in_dense_region")):
        assert not re.search(r"only \d+ events|changes \S+ by [\d.]+ points", sized[gate, code]), (gate, sized[gate, code])
    assert sized["CD57lo", "no_second_peak"].endswith(held)
    assert sized["CD127+", "cut_in_dense_region"].endswith("rest on CD3+, CD4+ (undetermined: no FMO or unstained control)")
    assert not re.search(r"[\d.]+ points of the parent", sized["CD127+", "cut_in_dense_region"])
    assert re.search(r"[\d.]+ points of the parent lie within", sized["CD3+", "cut_in_dense_region"])   # on lymph
    for code in ("no_second_peak", "cut_in_dense_region"):   # CD3+ itself undetermined: cd3_pct_of_lymph blank
        assert sized["CD3+", code].endswith("; size: not measured, the percentages it moves rest on CD3+ itself "
                                            "(undetermined: no FMO or unstained control) and are not reported"), sized
        assert not re.search(r"changes \S+ by", sized["CD3+", code]), sized["CD3+", code]


def test_a_decision_keeps_its_own_cut(drafted):
    """The server accepted 'positive' (the held call, its cut unchanged) sent with a moved cut, as an API
    client may send both, and kept a base version's decision when a later gate set moved the cut without
    withdrawing it: the version said 'accepted as held' of a gate it did not hold -> refused in one line
    naming the gate, as a 'negative' with a cut of its own is; the reviewer's own cut alone decides."""
    from tilpheno.review.regate import GateSetError, ReviewSource, undetermined_in, validate_gate_set

    _, _, out, _ = drafted
    source = ReviewSource(out)
    pid = str(pd.read_csv(out / "phenotypes.csv", dtype={"product_id": str})["product_id"].iloc[0])
    automatic, stained = source.automatic(pid), source.stained(pid)
    own = {**automatic["tubes"]["tube025"]["gates"]["CD3+"], "low": float(np.quantile(stained["tube025"].tube.data["CD3"], 0.3))}
    refused = r"^gates\.tube025\.decided\.CD3\+: 'positive' keeps the held positive call's cut, but the gate sent has a cut of its own"
    with pytest.raises(GateSetError, match=refused):
        validate_gate_set(automatic, {"tubes": {"tube025": {"gates": {"CD3+": own}, "decided": {"CD3+": "positive"}}}}, stained)
    accepted = validate_gate_set(automatic, {"tubes": {"tube025": {"gates": {}, "decided": {"CD3+": "positive"}}}}, stained)
    with pytest.raises(GateSetError, match=refused):   # the base's decision, not withdrawn
        validate_gate_set(accepted, {"tubes": {"tube025": {"gates": {"CD3+": own}}}}, stained)
    moved = validate_gate_set(accepted, {"tubes": {"tube025": {"gates": {"CD3+": own}, "decided": {"CD3+": "undecided"}}}}, stained)
    assert "decided" not in moved["tubes"]["tube025"] and "CD3+" not in undetermined_in(moved["tubes"]["tube025"])


def test_a_negative_call_off_the_scale_is_no_decision(drafted):
    """The negative call's gate (negative_call_gates) was offered and accepted wherever its cut lay, while
    candidate_gates leaves out a cut above the detector's top ($PnR) or outside the dimension's bounds:
    CD3+ of 100715.fcs, 'as negative its cut would be 1.287' (qc.csv), above the logicle scale's top, got a
    'judge the one population negative' button and a decision saving a gate past the instrument's range ->
    such a call is left out (ReviewSource.negative_calls: the page draws no button; CD19+'s, on the scale,
    stays) and 'negative' is refused in one line naming the gate; a cut past the bounds likewise."""
    from tilpheno.review.regate import GateSetError, ReviewSource, negative_calls_on_scale, validate_gate_set

    _, _, out, _ = drafted
    source = ReviewSource(out)
    pid = str(pd.read_csv(out / "phenotypes.csv", dtype={"product_id": str})["product_id"].iloc[0])
    automatic, stained = source.automatic(pid), source.stained(pid)
    st = stained["tube025"]
    said = pd.read_csv(out / "qc.csv").query("code == 'no_second_peak'").set_index("gate")["message"]
    cut = {p: float(re.search(r"as negative its cut would be ([-\d.]+)", said[p]).group(1)) for p in ("CD3+", "CD19+")}
    raw = {p: float(st.tube.transforms[p[:-1]].inverse(np.array([c]))[0]) for p, c in cut.items()}
    assert raw["CD3+"] > st.tops["CD3"] and raw["CD19+"] < st.tops["CD19"], (raw, st.tops)
    calls = source.negative_calls(pid)
    assert "CD3+" not in calls["tube025"]
    assert calls["tube025"]["CD19+"]["low"] == pytest.approx(cut["CD19+"], abs=1e-3)   # qc.csv rounds to 4 digits
    refused = (r"^gates\.tube025\.decided\.{}: 'negative' needs the negative call's cut, which the run did not record for "
               r"this gate or which lies off the scale")
    with pytest.raises(GateSetError, match=refused.format(r"CD3\+")):
        validate_gate_set(automatic, {"tubes": {"tube025": {"gates": {}, "decided": {"CD3+": "negative"}}}}, stained,
                          lambda: source.negative_calls(pid))
    past = json_copy(calls)
    past["tube025"]["CD19+"]["low"] = st.bounds["CD19"][1] + 0.1
    assert "CD19+" not in negative_calls_on_scale(past, stained)["tube025"]


def test_a_population_outside_lymph_has_no_share_of_it_not_an_undetermined_one(drafted, tmp_path):
    """Ki67+ gated on singlets (beside lymph, not within it) and undetermined: the report's subset table and the
    review page's live table (counts_table) said 'undetermined: no FMO or unstained control (Ki67+)' for its %
    of live lymph, which no population outside lymph has whatever its gates (blank for cells and singlets, NA in
    populations.csv) -> blank as theirs (the page: NA, ``within_lymph`` false); its count and % of parent and
    every cell of CD3+ (within lymph) still say undetermined."""
    from tilpheno.review.regate import ReviewSource, counts_table, evaluate, undetermined_in

    folder, study, _, _ = drafted
    beside = tmp_path / "study"
    shutil.copytree(study, beside)
    strategy = beside / "tube025.yaml"
    strategy.write_text(strategy.read_text().replace("{name: Ki67+, parent: lymph,", "{name: Ki67+, parent: singlets,", 1)
                        .replace("{numerator: Ki67+, denominator: lymph}", "{numerator: Ki67+, denominator: singlets}", 1))
    out = tmp_path / "out"
    _process(folder, beside, out, "now")
    pops = pd.read_csv(out / "populations.csv").set_index("population")
    assert pops.loc["Ki67+", "parent"] == "singlets" and pd.isna(pops.loc["Ki67+", "pct_of_live_lymph"])
    html = next(out.glob("products/*/report.html")).read_text()
    table = next(t for t in re.findall(r"<table.*?</table>", html, flags=re.S) if "% of live lymph" in t)
    cells = {row[0]: row[1:] for row in ([re.sub(r"<[^>]+>", "", c).strip() for c in re.findall(r"<td.*?</td>", tr, flags=re.S)]
                                          for tr in re.findall(r"<tr.*?</tr>", table, flags=re.S)) if row}
    header = [re.sub(r"<[^>]+>", "", h).strip() for h in re.findall(r"<th.*?</th>", table, flags=re.S)]
    share = header.index("% of live lymph") - 1
    ki67, cd3 = "undetermined: no FMO or unstained control (Ki67+)", "undetermined: no FMO or unstained control (CD3+)"
    assert cells["Ki67+"][1:share + 1] == [ki67, ki67, ""] and cells["singlets"][share] == "", cells["Ki67+"]
    assert cells["CD3+"][1:share + 1] == [cd3, cd3, cd3], cells["CD3+"]
    source = ReviewSource(out)
    pid = str(pd.read_csv(out / "phenotypes.csv", dtype={"product_id": str})["product_id"].iloc[0])
    entry, st = source.automatic(pid)["tubes"]["tube025"], source.stained(pid)["tube025"]
    rows = {r["population"]: r for r in counts_table(st.strategy, st.tube, evaluate(st.strategy, st.tube, entry["gates"]),
                                                      undetermined_in(entry))}
    assert (rows["Ki67+"]["count"], rows["Ki67+"]["within_lymph"], rows["Ki67+"]["pct_of_live_lymph"]) == (None, False, None)
    assert rows["CD3+"]["within_lymph"] and rows["lymph"]["within_lymph"] and not rows["singlets"]["within_lymph"]


def test_a_clamped_cut_below_undetermined_gates_quotes_no_held_count():
    """cut_at_scale_edge of a valley gate placed on events resting on an undetermined gate said what the
    gate keeps in held counts ('the gate keeps 299 of 300 events (99.67%)'), counts no output reports ->
    whether it keeps all, none or part of them (edge_50). On determined events it keeps its count."""
    from tilpheno.gates import checks
    from tilpheno.gates.placement import place_valley

    x = np.random.default_rng(12).normal(0.3, 0.1, 300)   # one broad population: 4 SDs above it is beyond the data
    placement = place_valley(x, "CD19", keep="low", fallback_sd=4)
    assert placement.diagnostics["clamped"]
    kept = int(np.count_nonzero(placement.gate.contains({"CD19": x})))

    def edge(held):
        [flag] = [f for f in checks.check_valley("CD19lo", placement, x, held=held).flags if f.code == "cut_at_scale_edge"]
        return flag.message

    assert f"the gate keeps {kept} of 300 events ({100 * kept / 300:.2f}%)" in edge(())
    said = edge(("CD3+",))
    word = "none" if kept == 0 else "all" if kept == x.size else "part"
    assert f"the gate keeps {word} of the events; look at" in said, said
    assert not re.search(r"\d+ of \d+ events|\d+(\.\d+)?%", said), said


def _fmo_flags(fmo, stained, held, percentile):
    """PD1+ placed on ``fmo`` and ``stained`` with both files' parents resting on the undetermined gates ``held``."""
    from tilpheno.gates import checks

    placement = checks.place_and_check("PD1+", "PD1", fmo, stained, percentile=percentile, source_file="fmo.fcs",
                                       held=held, control_held=held)
    return {f.code: f.message for f in placement.flags}, checks.threshold_record(placement, held, held), placement


@pytest.mark.parametrize("case", ["dense", "no_peak", "shifted"])
def test_an_fmo_gates_flags_and_record_below_undetermined_gates_quote_no_held_points(case):
    """An FMO gate whose stained parent rests on an undetermined gate quoted that held parent in its flags
    (cut_in_dense_region '16.7 points of the parent lie within 0.03 of it', uncertain_threshold 'yet 22.8% of
    the parent lies at or below', negative_shift 'moved 46.1 points of the parent') and its threshold record
    (sensitivity_points, correction_points: the report's and GatingResult.thresholds' columns) -> with
    held, the flags (same codes) quote none ('more than' a limit where the size is the check's) and the
    record's *_points are blank (edge_50). Without held the record keeps the points measured here."""
    rng = np.random.default_rng(3)
    fmo = rng.normal(0.0, 0.1, 20000)
    stained, percentile, code = {
        "dense": (rng.normal(0.0, 0.1, 20000), 80.0, "cut_in_dense_region"),
        "no_peak": (np.concatenate([rng.normal(0.3, 0.13, 12000), rng.normal(0.45, 0.1, 8000)]), 99.5, "uncertain_threshold"),
        "shifted": (np.concatenate([rng.normal(0.15, 0.13, 12000), rng.normal(0.35, 0.1, 8000)]), 99.5, "negative_shift"),
    }[case]
    said, record, placement = _fmo_flags(fmo, stained, (), percentile)
    held_said, held_record, _ = _fmo_flags(fmo, stained, ("CD3+", "CD4+"), percentile)
    assert code in said and set(held_said) == set(said), (said, held_said)
    cut = float(placement.diagnostics["threshold"])
    sens = 100.0 * np.count_nonzero(np.abs(stained - cut) <= 0.03) / stained.size   # checks.DELTA
    assert record["sensitivity_points"] == pytest.approx(sens, abs=1e-9)
    assert re.search(r"\d+\.\d+(%| points)", said[code]), said[code]
    for message in held_said.values():
        assert not re.search(r"\d+\.\d+(%| points)", message), message
    if case == "dense":
        assert f"{sens:.1f} points of the parent lie within 0.03 of it" in said[code]
    if case == "no_peak":
        assert "yet more than 6% of the parent lies at or below" in held_said[code], held_said[code]
    blank = [k for k in held_record if k.endswith("_points") or k == "fmo_pct_above"]   # fmo_pct_above: held2_51
    assert all(math.isnan(held_record[k]) for k in blank) and math.isfinite(record["fmo_pct_above"]), held_record
    assert {k: v for k, v in held_record.items() if k not in blank} == pytest.approx(
        {k: v for k, v in record.items() if k not in blank}, nan_ok=True)


@pytest.mark.parametrize("whole", [False, True])
def test_an_fmo_gate_placed_below_undetermined_gates_quotes_no_held_points(drafted, tmp_path, monkeypatch, whole):
    """The drafted study with CD127+ (within CD4+ within CD3+, both undetermined) gated on an FMO of CD127
    at its 80th percentile, in the negatives: its cut_in_dense_region quoted the held parent ('30.2 points
    of the parent lie within 0.03 of it') -> none: the engine passes the gates the stained parent rests on
    to the FMO gate's checks (edge_50). The report's FMO overlay of it said the held shares above the cut,
    counted on the events kept for plots when they are all of the file's (``whole``: 'stained 20.0% positive,
    FMO 20.0%' in its legend and description) or 'nan%' from the tables -> '% not determined' (held_51)."""
    if whole:   # every event kept for the plots (a file of at most PLOT_EVENTS events)
        monkeypatch.setattr("tilpheno.phenotype.PLOT_EVENTS", 10**9)
    folder, study, _, _ = drafted
    fcs, own = tmp_path / "fcs", tmp_path / "study"
    shutil.copytree(folder, fcs)
    shutil.copytree(study, own)
    data = (fcs / FILE.name).read_bytes()   # the same events, other bytes (a byte copy is refused as no FMO)
    (fcs / "fmo_cd127.fcs").write_bytes(data.replace(b"$BTIM\\15:36:28", b"$BTIM\\15:37:28", 1))
    with open(own / "manifest.csv", "a") as manifest:
        manifest.write(f"fmo_cd127.fcs,{pd.read_csv(own / 'manifest.csv')['product_id'].iloc[0]},tube025,fmo,CD127\n")
    strategy = own / "tube025.yaml"
    drafted_gate = "{name: CD127+, parent: CD4+, dims: [CD127], method: valley, params: {keep: high}}"
    assert drafted_gate in strategy.read_text()
    strategy.write_text(strategy.read_text().replace(
        drafted_gate, "{name: CD127+, parent: CD4+, dims: [CD127], method: fmo, params: {percentile: 80}}"))
    _process(fcs, own, tmp_path / "out", "now")
    qc = pd.read_csv(tmp_path / "out" / "qc.csv")
    [message] = qc.query("gate == 'CD127+' and code == 'cut_in_dense_region' and file == @FILE.name")["message"]
    assert "CD127+ (CD127): the threshold " in message and "lies inside the negative peak" in message, message
    assert not re.search(r"points of the parent", message), message
    html = next((tmp_path / "out").glob("products/*/report.html")).read_text()
    [overlay] = re.findall(r"<svg(?:(?!</svg>).)*?CD127 FMO vs stained histogram.*?</svg>", html, flags=re.S)
    assert "stained % not determined positive, FMO % not determined" in overlay, overlay[:600]
    assert "stained: % + not determined" in overlay and "FMO: % + not determined" in overlay, overlay[-3000:]
    assert not re.search(r"\d+\.\d+%", overlay), re.findall(r".{60}\d+\.\d+%.{20}", overlay)


def test_an_fmo_gates_excess_and_reference_positives_below_undetermined_gates_quote_no_held_share():
    """Two flags of an FMO gate whose parents rest on undetermined gates still quoted held shares (held_51):
    fmo_excess_positive the FMO parent's ('12.3% of the FMO's parent events lie above the threshold') and the
    quantile carry's reference check the reference population's ('2.08% of the reference population's stained
    events are FoxP3+') -> with held, 'more than' the excess limit and 'some'; without, the shares measured here.
    The excess is the FMO parent's (held when that rests on them, control_held), the reference's share is read on both
    files' reference events ('some' when either rests on them; undet_52)."""

    rng = np.random.default_rng(8)
    fmo, stained = rng.normal(0.2, 0.03, 5000), rng.normal(0.1, 0.03, 5000)   # stained negatives below the FMO's

    def excess(held):   # the FMO's parent resting on them (control_held): its share is held
        placement = checks.place_and_check("CD4+", "CD4", fmo, stained, percentile=99.5, source_file="f.fcs",
                                           max_shift=0.3, control_held=held)
        [flag] = [f for f in placement.flags if f.code == "fmo_excess_positive"]
        return flag.message, placement.diagnostics

    said, d = excess(())
    share = f"{100.0 * np.count_nonzero(fmo > float(d['threshold'])) / fmo.size:.1f}%"
    assert f"CD4+ (CD4): {share} of the FMO's parent events lie above" in said, said
    said = excess(("CD3+",))[0]
    assert "CD4+ (CD4): more than 1.5% of the FMO's parent events lie above the threshold" in said, said
    assert share not in said and re.findall(r"\d+\.\d+%", said) == ["1.5%", "0.5%"], said   # the limit, the nominal

    tr, population, treg_fmo, s, _ = treg_parent(93031)
    ref_fmo, ref_stained, _ = population(10000, 0.02)

    def reference(**held):
        placement = checks.place_and_check(
            "CD4+FoxP3+", "FoxP3", tr.apply(treg_fmo), s, reference_fmo=tr.apply(ref_fmo),
            reference_stained=tr.apply(ref_stained), percentile=99.5, source_file="", transform=tr, rule="relative",
            width_side="mid", reference_carry="quantile", **held)
        [flag] = [f for f in placement.flags if f.code == "uncertain_threshold"]
        return flag.message, placement.diagnostics

    said, d = reference()
    assert f"{d['reference_positive_pct']:.2f}% of the reference population's stained events are FoxP3+" in said, said
    said = reference(held=("CD3+", "CD4+"))[0]
    assert "some of the reference population's stained events are FoxP3+" in said, said
    assert not re.search(r"\d+\.\d+(%| points)", said), said
    said = reference(control_held=("CD3+", "CD4+"))[0]   # the stained parent's points reported, the share not
    assert "some of the reference population's stained events are FoxP3+" in said and " points of the parent" in said, said


def test_a_co_expression_warning_on_undetermined_gates_quotes_no_held_share(drafted):
    """The drafted study's co_expression checks (CD4+/CD8+ of CD3+, CD3+/CD19+ of lymph: one-population gates,
    held) quoted the held shares that stop 46 took out of every table ('92.7 % of CD3+ are both CD4+ and
    CD8+ (double positives; ... CD4+ 97.6 %, CD8+ 93.8 % of CD3+)') -> the warnings stay, on both gates,
    saying 'more than' the limit and naming the gates the shares rest on, in gating order (held_51)."""
    _, _, out, _ = drafted
    qc = pd.read_csv(out / "qc.csv")
    said = qc.query("code == 'co_expression'").set_index("gate")["message"]
    assert set(said.index) == {"CD4+", "CD8+", "CD3+", "CD19+"}, said
    assert said["CD4+"].startswith("CD4+ (CD4): more than the 10 % of CD3+ the strategy allows are both CD4+ and CD8+ "
                                   "(double positives; checks: co_expression; the shares rest on CD3+, CD8+, CD4+, "
                                   "undetermined, not quoted): one cell rarely carries CD4 and CD8"), said["CD4+"]
    assert "the shares rest on CD3+, CD19+, undetermined" in said["CD19+"], said["CD19+"]
    for message in said:
        assert re.findall(r"[\d.]+ %", message) == ["10 %"], message


def test_a_dim_subset_warning_on_undetermined_gates_quotes_no_held_points():
    """A declared dim_subset check on populations resting on an undetermined gate quoted their held count's
    points ('12.5 points of T cells are CD4- CD8- events with CD3 below ...') -> 'more than' its limit
    (held_51); on determined events the points as counted here."""
    rng = np.random.default_rng(5)
    reference, subset = rng.normal(0.6, 0.05, 2000), np.concatenate([rng.normal(0.6, 0.05, 200), rng.normal(0.3, 0.03, 300)])
    low = np.percentile(reference, 5.0)
    excess = 100.0 * (np.count_nonzero(subset < low) - 0.05 * subset.size) / 2500

    def said(held):
        points, flag = checks.dim_subset_flag("T cells", "CD4- CD8-", "CD4+ or CD8+", "CD3", subset, reference, 2500,
                                              held=held)
        assert points == pytest.approx(excess, abs=1e-9) and flag is not None
        return flag.message

    assert said(()).startswith(f"T cells (CD3): {excess:.1f} points of T cells are CD4- CD8- events"), said(())
    assert said(("CD3+",)).startswith("T cells (CD3): more than 2 points of T cells are CD4- CD8- events"), said(("CD3+",))
    assert f"{excess:.1f}" not in said(("CD3+",))


@pytest.mark.parametrize("undetermined_in", ["FMO", "stained"])
def test_an_fmo_gate_holds_only_what_rests_on_an_undetermined_gate_of_its_own_file(undetermined_in):
    """The engine end to end (held_51's wiring (a), unit-tested on checks.place_and_check only): CD3 has two
    populations in one file and one in the other, lying 1.0 above zero with no unstained control (CD3+
    undetermined in that file only: its table leaves its CD3+ and PD1+ counts and shares blank, the other file's
    are reported). With the FMO's CD3+ undetermined, PD1+'s fmo_excess_positive quoted that held share ('46.0% of
    the FMO's parent events lie above the threshold') -> 'more than' its limit (held2_51). But both files'
    undetermined gates were held for every number: the stained parent's, reported, was blanked too (the record's
    sensitivity_points and correction_points NaN, uncertain_threshold's 'more than 6% of the parent lies at or
    below'), and with the stained CD3+ undetermined the FMO's reported share too (undet_52) -> each file's
    undetermined gates hold that file's numbers only (``held`` and ``control_held``), counted here on the events."""
    from tilpheno.gates.strategy import parse_strategy
    from tilpheno.phenotype import gate_tube_kind, population_table, undetermined_gates

    strategy = parse_strategy(HELD_FMO_STRATEGY, "toy.yaml")
    rng = np.random.default_rng(8)
    n = 5000

    def cd3(one: bool) -> np.ndarray:
        positive = rng.random(n) < 0.7
        return rng.normal(1.0, 0.05, n) if one else np.where(positive, rng.normal(1.0, 0.05, n), rng.normal(0.0, 0.05, n))

    stained = toy_tube("stain", None, cd3(undetermined_in == "stained"),
                       rng.normal(0.1, 0.03, n))   # the stained negatives below the FMO's: the cut moves down
    fmo = toy_tube("fmo", "PD1", cd3(undetermined_in == "FMO"), rng.normal(0.2, 0.03, n))
    state, control = gate_tube_kind(strategy, [stained, fmo])
    held_file, reported_file = (control, state) if undetermined_in == "FMO" else (state, control)
    assert undetermined_gates(held_file.diagnostics) == {"CD3+"} and undetermined_gates(reported_file.diagnostics) == frozenset()
    table = population_table(strategy, held_file, undetermined_gates(held_file.diagnostics)).set_index("population")
    assert table[["count", "pct_of_parent"]].isna().all().all(), table   # the held file's shares
    [threshold] = state.thresholds
    cut, d = threshold["value_transformed"], state.diagnostics["PD1+"]
    fmo_parent = fmo.data["PD1"][control.masks["CD3+"]]
    share = 100.0 * np.count_nonzero(fmo_parent > cut) / fmo_parent.size   # the FMO table's PD1+ % of CD3+
    stained_parent = stained.data["PD1"][state.masks["CD3+"]]
    sensitivity = 100.0 * np.count_nonzero(np.abs(stained_parent - cut) <= checks.DELTA) / stained_parent.size
    below = 100.0 * np.count_nonzero(stained_parent <= cut) / stained_parent.size
    assert share > 1.5 and below > 6   # fmo_excess_positive's and uncertain_threshold's limits: both fire
    assert d["fmo_pct_above"] == pytest.approx(share, abs=1e-9) and d["sensitivity_points"] == pytest.approx(sensitivity)
    said = {f.code: f.message for f in state.flags if f.gate == "PD1+"}
    excess, uncertain = said["fmo_excess_positive"], said["uncertain_threshold"]
    if undetermined_in == "FMO":
        assert math.isnan(threshold["fmo_pct_above"]), threshold   # the record (GatingResult.thresholds): blank
        assert threshold["sensitivity_points"] == pytest.approx(sensitivity, abs=1e-9), threshold
        assert excess.startswith("PD1+ (PD1): more than 1.5% of the FMO's parent events lie above the threshold"), said
        assert f"yet {below:.1f}% of the parent lies at or below the cut" in uncertain, uncertain
        assert all(f"{share:.1f}" not in message for message in said.values()), said
    else:
        assert threshold["fmo_pct_above"] == pytest.approx(share, abs=1e-9), threshold
        assert all(math.isnan(v) for k, v in threshold.items() if k.endswith("_points")), threshold
        assert excess.startswith(f"PD1+ (PD1): {share:.1f}% of the FMO's parent events lie above the threshold"), said
        assert "yet more than 6% of the parent lies at or below the cut" in uncertain, uncertain
        for message in said.values():
            assert not re.search(r"\d+\.\d+ points", message) and f"{below:.1f}%" not in message, message


def test_an_fmo_gate_without_a_stained_negative_peak_says_what_its_cut_keeps():
    """The toy above with both CD3+ gates determined: the stained PD1 negatives (0.1) lie below the FMO's (0.2),
    beyond the stained negative peak's reach (the FMO's mode - 2 widths - 0.02 up to + max_shift 0.3), so the FMO
    percentile is the cut, beyond the stained parent's events and clamped to its largest. Its note said 'parent
    taken as all positive', the gate keeping none of it; uncertain_threshold quoted 'the FMO percentile' with the
    clamped cut's value (0.203, the record's fmo_threshold 0.27) and 'within 0.3 transformed units' (undet_52) ->
    both say the cut, the rule's own cut as recorded, that it was clamped and what the gate keeps. The outcome is
    the issue's convention (one population called against its control): the stained parent lies below its FMO's
    percentile, none of it positive."""
    state, stained_parent, fmo_parent, threshold = fmo_toy(lambda rng, n: rng.normal(0.1, 0.03, n))
    d, cut, rule_cut = state.diagnostics["PD1+"], threshold["value_transformed"], threshold["fmo_threshold"]
    # independent truth: the FMO's 99.5th percentile in its parent, beyond every stained parent event
    assert rule_cut == pytest.approx(np.percentile(fmo_parent, 99.5), abs=2e-3)
    assert threshold["winner"] == "fmo_percentile" and math.isnan(threshold["stained_mode"])
    assert stained_parent.max() < rule_cut and cut == pytest.approx(stained_parent.max(), abs=1e-12)
    assert np.count_nonzero(state.masks["PD1+"]) == 0   # called against its control: none positive
    assert "all positive" not in d["note"]
    assert d["note"].endswith(f"; cut {cut:.4g} ({rule_cut:.4g} clamped to the stained parent's largest event), "
                              "the gate keeps none of the parent"), d["note"]
    said = {f.code: f.message for f in state.flags if f.gate == "PD1+"}
    low, high = d["fmo_mode"] - 2.0 * d["fmo_width"] - 0.02, d["fmo_mode"] + 0.3
    assert low > np.median(stained_parent)   # the stained negatives lie below the window
    below = 100.0 * np.count_nonzero(stained_parent <= cut) / stained_parent.size
    assert (f"PD1+ (PD1): no stained negative peak near the FMO's mode {d['fmo_mode']:.3f} (none from {low:.3f} to "
            f"{high:.3f}), yet {below:.1f}% of the parent lies at or below the cut {cut:.3f} (the FMO percentile "
            f"{rule_cut:.3f}, clamped to the stained parent's largest event; the gate keeps none of the parent, called "
            "against its control) (limit 6)") in said["uncertain_threshold"], said["uncertain_threshold"]
    assert (f"lie above the threshold {cut:.3f} (nominal 0.5%, rule fmo_percentile, its cut {rule_cut:.3f}, clamped to "
            "the stained parent's largest event)") in said["fmo_excess_positive"], said["fmo_excess_positive"]


def test_an_fmo_gate_clamped_below_the_stained_parents_lowest_event_keeps_all_of_it():
    """The mirror of the toy above: the stained PD1 events (0.9) lie far above the FMO's (0.2), beyond the stained
    negative peak's reach, so the FMO percentile is the cut, below every stained parent event. Clamped to the
    lowest event, the gate (positive: above the cut) kept all of the parent but that event, 'part' of it, where
    the convention says one population called against its control above the FMO's percentile is all positive
    (stop 52's note, msg_52) -> the clamp puts the cut just below that event (placement.clamp_to_parent): the gate
    keeps all of the parent, the note and the record say so, and the review app's automatic candidate (the
    recorded cut) reproduces the gate's coordinate exactly."""
    from tilpheno.review.regate import candidate_coordinate

    state, stained_parent, fmo_parent, threshold = fmo_toy(lambda rng, n: rng.normal(0.9, 0.03, n))
    d, cut, rule_cut = state.diagnostics["PD1+"], threshold["value_transformed"], threshold["fmo_threshold"]
    # independent truth: the FMO's 99.5th percentile in its parent, below every stained parent event
    assert rule_cut == pytest.approx(np.percentile(fmo_parent, 99.5), abs=2e-3)
    assert threshold["winner"] == "fmo_percentile" and math.isnan(threshold["stained_mode"])
    assert rule_cut < cut < stained_parent.min() and cut == np.nextafter(stained_parent.min(), -np.inf)
    assert np.array_equal(state.masks["PD1+"], state.masks["CD3+"])   # called against its control: all positive
    assert d["note"].endswith(f"; cut {cut:.4g} ({rule_cut:.4g} clamped to just below the stained parent's smallest "
                              "event), the gate keeps all of the parent"), d["note"]
    [gate] = [g for name, _, g, _ in state.gates if name == "PD1+"]
    assert candidate_coordinate("low", cut) == gate.low == stained_parent.min()


@pytest.mark.parametrize("pd1", ["two populations", "one population"])
def test_a_fallback_gate_below_an_undetermined_gate_quotes_no_held_count(pd1):
    """The no-FMO fallback of a threshold gate (placement.place_valley on the stained tube, without
    checks.check_valley) below an undetermined gate (CD3: one population 1.0 above zero, no FMO or unstained
    control): its flags (missing_fmo, fallback_gate, no_second_peak) quote cuts and peaks, no count, and its record
    no points (audit, held2_51). The undetermined gate's own cut_at_scale_edge said what it keeps in its held count
    ('the gate keeps 4999 of 5000 events (99.98%)'; populations.csv leaves CD3+'s count blank) -> 'part of the
    events' (all, none or part, as below such a gate)."""
    from tilpheno.gates.strategy import parse_strategy
    from tilpheno.phenotype import gate_tube_kind, population_table, undetermined_gates

    strategy = parse_strategy(HELD_FMO_STRATEGY, "toy.yaml")
    rng = np.random.default_rng(8)
    n = 5000
    values = (np.where(rng.random(n) < 0.3, rng.normal(1.0, 0.05, n), rng.normal(0.1, 0.05, n))
              if pd1 == "two populations" else rng.normal(0.05, 0.03, n))
    [state] = gate_tube_kind(strategy, [toy_tube("stain", None, rng.normal(1.0, 0.05, n), values)])
    assert undetermined_gates(state.diagnostics) == {"CD3+"}
    table = population_table(strategy, state, undetermined_gates(state.diagnostics)).set_index("population")
    assert table[["count", "pct_of_parent"]].isna().all().all(), table
    [threshold] = state.thresholds
    assert threshold["method"].startswith("fallback_") and threshold["source_file"] == ""
    assert all(math.isnan(v) for k, v in threshold.items() if k.endswith("_points") or k == "fmo_pct_above"), threshold
    said = {(f.gate, f.code): f.message for f in state.flags}
    assert {("PD1+", "missing_fmo"), ("PD1+", "fallback_gate"), ("CD3+", "cut_at_scale_edge")} <= set(said), said
    assert (("PD1+", "no_second_peak") in said) == (pd1 == "one population"), said
    kept = int(np.count_nonzero(state.masks["CD3+"]))
    assert 0 < kept < n and ", the gate keeps part of the events; look at" in said["CD3+", "cut_at_scale_edge"], said
    for message in said.values():
        assert not re.search(r"\d+ of \d+ events|\d+(\.\d+)?%|points of the parent", message), message


def test_a_fallback_gates_self_checks_below_an_undetermined_gate_quote_no_held_count():
    """The no-FMO fallback now carries the valley gates' self-checks (checks.check_valley, fallback_52): placed on
    600 events resting on CD3+ (undetermined: one population 1.0 above zero, no control), one PD1 population whose
    cut 4 SDs up lies beyond the data -> few_events and cut_at_scale_edge, quoting no held count ('fewer than 1000
    events', 'keeps none of the events', not 'only 600 events'), their size not measured and naming CD3+; the
    threshold record leaves the check's points blank (the API's diagnostics keep them)."""
    from tilpheno.gates.strategy import parse_strategy
    from tilpheno.phenotype import gate_tube_kind, undetermined_gates

    strategy = parse_strategy(HELD_FMO_STRATEGY, "toy.yaml")
    rng = np.random.default_rng(8)
    n = 600
    pd1 = rng.normal(0.05, 0.03, n)
    [state] = gate_tube_kind(strategy, [toy_tube("stain", None, rng.normal(1.0, 0.05, n), pd1)])
    assert undetermined_gates(state.diagnostics) == {"CD3+"}
    parent = pd1[state.masks["CD3+"]]   # its count is held (populations.csv: blank)
    assert 0 < parent.size < 1000
    said = {f.code: f for f in state.flags if f.gate == "PD1+"}
    assert {"missing_fmo", "fallback_gate", "no_second_peak", "few_events", "cut_at_scale_edge"} <= set(said), said
    assert "was placed on fewer than 1000 events" in said["few_events"].message, said["few_events"].message
    assert f"{parent.max():.4g}]; clamped to" in said["cut_at_scale_edge"].message
    assert "the gate keeps none of the events" in said["cut_at_scale_edge"].message, said["cut_at_scale_edge"].message
    for code in ("few_events", "no_second_peak"):
        assert said[code].message.endswith("size: not measured, the percentages it moves rest on CD3+ (undetermined: "
                                           "no FMO or unstained control)"), said[code].message
    for flag in said.values():
        assert not re.search(r"\d+ of \d+ events|\d+(\.\d+)?%|points of the parent|only \d+ events", flag.message), flag
    [threshold] = state.thresholds
    assert math.isnan(threshold["sensitivity_points"]) and state.diagnostics["PD1+"]["resting_on"] == ("CD3+",)
    assert math.isfinite(state.diagnostics["PD1+"]["sensitivity_points"])


@pytest.mark.parametrize("pd1", ["even", "on the dimmest CD3"])
def test_an_undetermined_gates_own_flags_are_review_warnings_not_sized_on_its_held_percentages(pd1):
    """An undetermined gate's own density flags were sized on the percentages its cut moves, every one resting
    on it, held, blank in every table ('CD3+ (CD3): ...; size: moving the cut to 0.910, 1.203 changes
    pd1_pct_of_cd3 by 0.0 points', pd1_pct_of_cd3 blank; the drafted study's CD3+: 'changes cd3_pct_of_lymph by
    88.0 points', its held % of lymph) -> the message said those percentages rest on the gate itself, but the
    severity stayed as sized: info where the alternatives moved the held variable by 2 points or less (PD1+ spread
    evenly over CD3), so the gate's no_second_peak, the flag that says its side is undetermined and that holds
    release (qc.UNDETERMINED_CODE), needed no review (msgs_53) -> not sized, as the flags of a gate below it:
    review warnings whatever the held percentages do (counted here on the events: PD1+ only on the dimmest CD3
    moves the variable by more than 2 points, evenly spread PD1+ by less), 'size: not measured'."""
    from tilpheno.gates.strategy import parse_strategy
    from tilpheno.phenotype import gate_tube_kind, undetermined_gates

    strategy = parse_strategy(HELD_FMO_STRATEGY, "toy.yaml")
    rng = np.random.default_rng(8)
    n = 5000
    cd3 = rng.normal(1.0, 0.05, n)   # one population 1.0 above zero, no FMO or unstained control: undetermined
    positive = rng.random(n) < 0.3 if pd1 == "even" else cd3 < 0.95
    values = np.where(positive, rng.normal(1.0, 0.05, n), rng.normal(0.1, 0.05, n))
    [state] = gate_tube_kind(strategy, [toy_tube("stain", None, cd3, values)])
    assert undetermined_gates(state.diagnostics) == {"CD3+"}
    [threshold] = state.thresholds
    pd1_cut, d = threshold["value_transformed"], state.diagnostics["CD3+"]

    def pd1_pct_of_cd3(cut: float) -> float:   # the variable with CD3+ cut at ``cut`` (positive: above it)
        return 100.0 * np.count_nonzero((cd3 > cut) & (values > pd1_cut)) / np.count_nonzero(cd3 > cut)

    said = {f.code: f for f in state.flags if f.gate == "CD3+"}
    assert {"no_second_peak", "cut_at_scale_edge"} <= set(said), said
    sizes = {code: max(abs(pd1_pct_of_cd3(a) - pd1_pct_of_cd3(d["threshold"]))   # a cut above every event: no %
                       for a in d["alternative_cuts"][code] if np.count_nonzero(cd3 > a)) for code in said}
    # the held variable moves by the limit or less with PD1+ spread evenly, by more with PD1+ on the dimmest CD3
    assert (max(sizes.values()) > checks.IMPACT_POINTS) == (pd1 != "even"), sizes
    for flag in said.values():
        assert flag.severity == "warning" and checks.needs_review(flag), flag
        assert flag.message.endswith("; size: not measured, the percentages it moves rest on CD3+ itself "
                                     "(undetermined: no FMO or unstained control) and are not reported"), flag.message
        assert not re.search(r"changes \S+ by|[\d.]+ points", flag.message), flag.message


@pytest.mark.parametrize("held", [False, True])
def test_the_fmo_tables_rule_quotes_no_blank_points_below_undetermined_gates(held):
    """The report's FMO table states a gate's tail-shape check and fit interval with their sizes ('log-normal
    tail 0.512 (3.1 points of the parent)', '95 % interval; 1.2 points of the parent'); below an undetermined
    gate the threshold record leaves those sizes blank (``checks.threshold_record``), and the rule read
    'log-normal tail 0.512 ( points of the parent)' -> the size is left out where it is blank."""
    from types import SimpleNamespace

    from tilpheno.report.product import fmo_table

    blank = float("nan")
    row = {"population": "M+", "marker": "M", "parent": "P", "percentile": 99.5, "value_transformed": 0.5,
           "value_raw": 500.0, "method": "fmo", "source_file": "fmo.fcs", "winner": "fmo_relative",
           "fmo_threshold": 0.45, "relative_threshold": 0.5, "relative_low": 0.48, "relative_high": 0.52,
           "valley_threshold": blank, "shift": 0.05, "relative_lognormal": 0.512,
           "tail_points": blank if held else 3.14, "fit_error": 0.021, "fit_normal": 0.49,
           "candidate_points": blank if held else 1.23}
    table = pd.DataFrame([row])
    populations = pd.DataFrame({"population": ["P", "M+"], "count": [1000, 100], "pct_of_parent": [100.0, 10.0]})
    result = SimpleNamespace(tubes=[SimpleNamespace(file="stain.fcs", shown_name="stain.fcs", role="stain",
                                                    thresholds=table, populations=populations),
                                    SimpleNamespace(file="fmo.fcs", shown_name="fmo.fcs", role="fmo",
                                                    thresholds=table[:0], populations=populations)])
    rule = fmo_table(result, 99.5).rows[0][-1]
    assert "log-normal tail 0.512" in rule and "fit ± 0.021 (95 % interval" in rule, rule
    if held:
        assert "points" not in rule and "( " not in rule and "; )" not in rule, rule
    else:
        assert "log-normal tail 0.512 (3.1 points of the parent)" in rule, rule
        assert "fit ± 0.021 (95 % interval; 1.2 points of the parent)" in rule, rule


@pytest.mark.parametrize("params", ["{max_shift: 0.3}", "{rule: percentile}"])
def test_the_fmo_tables_rule_leaves_out_a_candidate_the_record_lacks(params):
    """The report's FMO table states the rule that won with its candidates, each blank one as an empty slot: a
    stained tube without a valley read 'fmo_percentile: FMO 0.271, rel. 0.272 [0.272–0.278], valley , shift 0.001',
    a rule: percentile gate (no stained evidence) 'fmo_percentile: FMO 0.271, rel.  [–], valley , shift ' ->
    only the candidates the threshold record has (the engine's record: PD1 stained like its FMO, one population)."""
    from types import SimpleNamespace

    from tilpheno.gates.strategy import parse_strategy
    from tilpheno.phenotype import gate_tube_kind, population_table
    from tilpheno.report.html import fmt
    from tilpheno.report.product import fmo_table

    strategy = parse_strategy(HELD_FMO_STRATEGY.replace("{max_shift: 0.3}", params), "toy.yaml")
    rng = np.random.default_rng(8)
    n = 5000

    def tube(role: str, fmo_marker: str | None):
        cd3 = np.where(rng.random(n) < 0.7, rng.normal(1.0, 0.05, n), rng.normal(0.0, 0.05, n))
        return toy_tube(role, fmo_marker, cd3, rng.normal(0.2, 0.03, n))

    files = [tube("stain", None), tube("fmo", "PD1")]
    states = gate_tube_kind(strategy, files)
    [record] = states[0].thresholds
    assert math.isnan(record["valley_threshold"]), record   # no stained valley
    result = SimpleNamespace(tubes=[
        SimpleNamespace(file=f.file, shown_name=f.file, role=f.role, thresholds=pd.DataFrame(st.thresholds),
                        populations=population_table(strategy, st)) for f, st in zip(files, states)])
    [row] = fmo_table(result, 99.5).rows
    said = [f"FMO {fmt(record['fmo_threshold'], 3)}"]
    if params == "{max_shift: 0.3}":
        said += [f"rel. {fmt(record['relative_threshold'], 3)} [{fmt(record['relative_low'], 3)}–"
                 f"{fmt(record['relative_high'], 3)}]", f"shift {fmt(record['shift'], 3)}"]
    else:
        assert all(math.isnan(record[k]) for k in ("relative_threshold", "relative_low", "relative_high", "shift"))
    assert row[-1] == f"{record['winner']}: {', '.join(said)}", row[-1]
