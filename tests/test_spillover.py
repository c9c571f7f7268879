"""Spillover from single-stain controls (tilpheno.spillover) against simulated controls made with a
known matrix, the CLI, the error messages, and the residual-spillover check."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from tilpheno.cli import app
from tilpheno.compensation import Spillover, compensate, read_spillover_csv
from tilpheno.errors import CompensationError, TableError
from tilpheno.io.fcs_write import write_fcs
from tilpheno.simulate import instrument as ins
from tilpheno.simulate.controls import control_file_name, simulate_control, simulate_controls
from tilpheno.simulate.products import KIND_LYMPH, TUBES, draw_composition, simulate_tube
from tilpheno.spillover import (
    Control, controls_in_folder, detector_from_text, estimate_spillover, negative_coefficients, read_controls_csv,
    residual_spillover,
)

TOLERANCE = 0.005   # issue 15: every recovered coefficient within 0.005 of the truth


@pytest.fixture(scope="module")
def cell_controls(tmp_path_factory):
    return simulate_controls(tmp_path_factory.mktemp("cells"), 7, n_events=10000, kind="cells")


@pytest.fixture(scope="module")
def bead_controls(tmp_path_factory):
    return simulate_controls(tmp_path_factory.mktemp("beads"), 8, n_events=10000, kind="beads", unstained=False)


def test_cells_with_unstained_control_recover_the_matrix(cell_controls):
    est = estimate_spillover(controls_in_folder(cell_controls.out_dir))
    assert est.spillover.detectors == ins.DETECTORS
    assert np.abs(est.spillover.matrix - cell_controls.matrix).max() <= TOLERANCE
    assert set(est.controls["negative"]) == {"unstained"}
    ssm = est.ssm.to_numpy()
    assert np.isnan(np.diag(ssm)).all()
    # spreading follows spillover: FITC spreads into PE (0.215) much more than into APC-H7 (0)
    assert est.ssm.loc["FITC-A", "PE-A"] > 5 * est.ssm.loc["FITC-A", "APC-H7-A"]


def test_beads_with_internal_negatives_recover_the_matrix(bead_controls):
    est = estimate_spillover(controls_in_folder(bead_controls.out_dir))
    assert np.abs(est.spillover.matrix - bead_controls.matrix).max() <= TOLERANCE
    assert set(est.controls["negative"]) == {"internal"}


def test_detector_inference_from_names():
    dets = ["FITC-A", "PE-A", "PE-Cy7-A", "PerCP-Cy5-5-A", "APC-A", "APC-H7-A", "BV421-A"]
    assert detector_from_text("Compensation Controls_APC-H7 Stained Control", dets) == "APC-H7-A"
    assert detector_from_text("Compensation Controls_APC Stained Control", dets) == "APC-A"
    assert detector_from_text("PerCP-Cy5.5 beads", dets) == "PerCP-Cy5-5-A"
    assert detector_from_text("specimen_PE-Cy7", dets) == "PE-Cy7-A"
    assert detector_from_text("Specimen_001", dets) is None


def test_cli_writes_a_matrix_process_can_read(cell_controls, tmp_path):
    out = tmp_path / "matrix.csv"
    res = CliRunner().invoke(app, ["compensate", str(cell_controls.out_dir), "-o", str(out), "--controls",
                                   str(cell_controls.controls_csv), "--ssm", str(tmp_path / "ssm.csv")])
    assert res.exit_code == 0, res.output
    header = out.read_text().splitlines()[0]
    assert header == ",".join(ins.DETECTORS)
    back = read_spillover_csv(out)
    assert back.detectors == ins.DETECTORS and np.abs(back.matrix - cell_controls.matrix).max() <= TOLERANCE
    assert (tmp_path / "ssm.csv").exists()
    # every file it wrote is named (it said only the matrix)
    assert res.output.strip().splitlines()[-1] == f"wrote {out}, {tmp_path / 'ssm.csv'}", res.output


@pytest.mark.parametrize("option", ["-o", "--ssm", "--diagnostics"])
def test_cli_an_output_it_cannot_write_is_one_line(cell_controls, tmp_path, option):
    """An output path that is a folder: exit 2, one line naming that path (not the atomic writer's
    temporary file), no traceback."""
    taken = tmp_path / "taken"
    taken.mkdir()
    paths = {"-o": tmp_path / "matrix.csv", "--ssm": tmp_path / "ssm.csv", "--diagnostics": tmp_path / "diag.csv"}
    paths[option] = taken
    args = ["compensate", str(cell_controls.out_dir), "--controls", str(cell_controls.controls_csv)]
    for name, path in paths.items():
        args += [name, str(path)]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 2, res.output
    assert res.output.strip().splitlines()[-1] == f"error: {taken}: Is a directory"
    assert res.exception is None or isinstance(res.exception, SystemExit)
    assert not list(tmp_path.glob(".*.part"))


def test_controls_csv_errors_name_the_row(cell_controls, tmp_path):
    """The controls table names a row as the other tables do, by the line a user finds it on
    ('row N, column C'; it said 'row 1 (line 2)' counting a header on line 1), and reads a title
    line, blank lines and semicolons as the manifest does (they were 'missing column(s)')."""
    bad = tmp_path / "controls.csv"
    bad.write_text("file,detector\nmissing.fcs,FITC-A\n")
    with pytest.raises(TableError, match=rf"^{re.escape(str(bad))}: row 2, column 'file': 'missing.fcs' does not exist"):
        controls_in_folder(cell_controls.out_dir, bad)
    good = cell_controls.controls_csv.read_text(encoding="utf-8").strip().splitlines()
    text = "\n".join(["Compensation controls, run 5;;", "", *(line.replace(",", ";") for line in good), "", "gone.fcs;PE-A"])
    bad.write_text(text + "\n")
    line = text.splitlines().index("gone.fcs;PE-A") + 1
    with pytest.raises(TableError, match=rf"^{re.escape(str(bad))}: row {line}, column 'file': 'gone.fcs' does not exist"):
        read_controls_csv(bad, base=cell_controls.out_dir)
    bad.write_text("\n".join(text.splitlines()[:-1]) + "\n")
    assert read_controls_csv(bad, base=cell_controls.out_dir) == read_controls_csv(cell_controls.controls_csv)


def test_a_controls_csv_without_a_single_stain_row_is_named(cell_controls, tmp_path):
    """compensate --controls with a header only (or only the unstained control's row) said 'single-stain
    controls in FOLDER: no single-stain control among 0 file(s)', naming the folder, not the CSV that
    held no control -> one line naming the CSV and what it lacks, exit 2, no matrix written."""
    unstained = next(c for c in controls_in_folder(cell_controls.out_dir) if not c.detector)
    cases = {"header.csv": ("file,detector\n\n", rf"row 1: no control below the header"),
             "unstained.csv": (f"file,detector\n{unstained.file},\n", r"no single-stain control: the detector of every row \(1\)")}
    for name, (text, expected) in cases.items():
        csv_path = tmp_path / name
        csv_path.write_text(text)
        with pytest.raises(TableError, match=rf"^{re.escape(str(csv_path))}: {expected}"):
            read_controls_csv(csv_path)
        out = tmp_path / "matrix.csv"
        res = CliRunner().invoke(app, ["compensate", str(cell_controls.out_dir), "--controls", str(csv_path), "-o", str(out)])
        assert res.exit_code == 2
        (line,) = res.output.strip().splitlines()
        assert line.startswith(f"error: {csv_path}: ") and not out.exists(), line


@pytest.mark.parametrize("stained,typo", [("FITC-A", "FITC-H"), ("PE-A", "PE-Cy7-A")])
def test_a_controls_csv_detector_that_is_not_a_channel_names_its_row(cell_controls, tmp_path, stained, typo):
    """compensate --controls with a detector its FCS file lacks (a typo: FITC-H, PE-Cy7-A) named an FCS
    file, not the CSV row holding it (the first control's: '<fcs>: control lacks detector(s) ['FITC-H'];
    channels are [...]'; a later one's named the first control's file) -> one line naming the CSV, its
    row and column, the detector, the control's file and its fluorescence channels; exit 2, no matrix."""
    lines = cell_controls.controls_csv.read_text(encoding="utf-8").splitlines()
    (row,) = [i + 1 for i, line in enumerate(lines) if line.endswith(f",{stained}")]
    file = lines[row - 1].split(",")[0]
    csv_path = tmp_path / "controls.csv"
    absolute = [lines[0], *(f"{cell_controls.out_dir / line.split(',')[0]},{line.split(',')[1]}" for line in lines[1:])]
    csv_path.write_text("\n".join(line.replace(f",{stained}", f",{typo}") for line in absolute) + "\n")
    out = tmp_path / "matrix.csv"
    res = CliRunner().invoke(app, ["compensate", str(cell_controls.out_dir), "--controls", str(csv_path), "-o", str(out)])
    assert res.exit_code == 2
    (line,) = res.output.strip().splitlines()
    assert line == (f"error: {csv_path}: row {row}, column 'detector': detector {typo!r} is not a channel of {file} "
                    f"(its fluorescence channels: {', '.join(ins.DETECTORS)})"), line
    assert not out.exists()


def _write_control(path, events):
    write_fcs(path, events, [(n, None, ins.RANGE) for n in ins.CHANNEL_NAMES], {"$TIMESTEP": str(ins.TIMESTEP)})
    return str(path)


def test_dim_small_and_duplicate_controls_are_errors_naming_the_control(tmp_path):
    rng = np.random.default_rng(3)
    unstained = Control(_write_control(tmp_path / "unst.fcs", simulate_control(None, 5000, rng)), None)
    ok = Control(_write_control(tmp_path / "pe.fcs", simulate_control(1, 5000, rng)), "PE-A")
    dim = Control(_write_control(tmp_path / "dim_fitc.fcs", simulate_control(0, 5000, rng, brightness=60.0)), "FITC-A")
    with pytest.raises(CompensationError, match=r"dim_fitc.fcs: positive population too (dim|small)"):
        estimate_spillover([unstained, ok, dim])
    few = simulate_control(0, 5000, rng, positive_fraction=0.004)
    small = Control(_write_control(tmp_path / "few_fitc.fcs", few), "FITC-A")
    with pytest.raises(CompensationError, match=r"few_fitc.fcs: positive population too small"):
        estimate_spillover([unstained, ok, small])
    with pytest.raises(CompensationError, match=r"pe2.fcs: detector PE-A already has control pe.fcs"):
        estimate_spillover([unstained, ok, Control(ok.file.replace("pe.fcs", "pe2.fcs"), "PE-A")])


def test_a_control_without_negative_events_and_no_unstained_control_says_so(tmp_path):
    # every cell stained and no unstained control: Otsu's threshold halves the (bright) positives,
    # the low stain index is not the fluorochrome's dimness: the error says what to add
    rng = np.random.default_rng(5)
    fitc = Control(_write_control(tmp_path / "fitc.fcs", simulate_control(0, 5000, rng)), "FITC-A")
    pe = Control(_write_control(tmp_path / "pe_all.fcs", simulate_control(1, 5000, rng, positive_fraction=1.0)), "PE-A")
    with pytest.raises(CompensationError,
                       match=r"pe_all.fcs: positive population too dim in PE-A: .*median \d{4,}; "
                             r"a control without negative events needs an unstained control"):
        estimate_spillover([fitc, pe])


def test_negative_spillover_and_singular_matrix(tmp_path):
    rng = np.random.default_rng(4)
    neg = ins.SPILLOVER_MATRIX.copy()
    neg[0, 1] = -0.06
    unstained = Control(_write_control(tmp_path / "unst.fcs", simulate_control(None, 5000, rng)), None)
    fitc = Control(_write_control(tmp_path / "fitc.fcs", simulate_control(0, 5000, rng, matrix=neg)), "FITC-A")
    pe = Control(_write_control(tmp_path / "pe.fcs", simulate_control(1, 5000, rng)), "PE-A")
    with pytest.raises(CompensationError, match=r"fitc.fcs: negative spillover beyond noise into PE-A"):
        estimate_spillover([unstained, fitc, pe])
    same = ins.SPILLOVER_MATRIX.copy()
    same[0, 1], same[1, 0] = 1.0, 1.0   # FITC and PE indistinguishable
    a = Control(_write_control(tmp_path / "a.fcs", simulate_control(0, 5000, rng, matrix=same)), "FITC-A")
    b = Control(_write_control(tmp_path / "b.fcs", simulate_control(1, 5000, rng, matrix=same)), "PE-A")
    with pytest.raises(CompensationError, match=r"singular .*a.fcs, b.fcs"):
        estimate_spillover([unstained, a, b])


@pytest.fixture(scope="module")
def stained():
    rng = np.random.default_rng(11)
    tube = simulate_tube(draw_composition(rng), TUBES[0], 20000, rng)
    events = tube.events.astype(np.float64)
    names = list(ins.CHANNEL_NAMES)
    true = compensate(events, names, Spillover(ins.DETECTORS, ins.SPILLOVER_MATRIX))
    labels = {"FITC-A": "cd3", "PE-A": "pd1", "PerCP-Cy5-5-A": "dead", "APC-A": "cd56", "BV421-A": "cd4",
              "APC-H7-A": "cd8"}
    lymph = tube.kind == KIND_LYMPH
    # negative cuts like FMO thresholds: 99.5th percentile of the label-negative lymphocytes
    cuts = {d: float(np.percentile(true[lymph & ~tube.labels[l], names.index(d)], 99.5)) for d, l in labels.items()}
    return events, names, lymph, cuts


@pytest.mark.parametrize("pair,delta", [((0, 1), 0.1), ((0, 1), -0.1), ((1, 2), 0.1), ((3, 5), -0.1)])
def test_residual_spillover_flags_a_wrong_coefficient(stained, pair, delta):
    events, names, lymph, cuts = stained

    def check(matrix):
        comp = compensate(events, names, Spillover(ins.DETECTORS, matrix))
        return residual_spillover({d: comp[:, names.index(d)] for d in ins.DETECTORS}, mask=lymph, negative_cuts=cuts)

    assert not check(ins.SPILLOVER_MATRIX)["flagged"].any()
    wrong = ins.SPILLOVER_MATRIX.copy()
    wrong[pair] += delta
    table = check(wrong)
    src, tgt = ins.DETECTORS[pair[0]], ins.DETECTORS[pair[1]]
    row = table[(table["source"] == src) & (table["target"] == tgt)].iloc[0]
    assert row["flagged"] and np.sign(row["slope"]) == -np.sign(delta)   # too large -> over-compensated
    assert abs(row["slope"] + delta) < 0.03


@pytest.fixture(scope="module")
def fmo_cd3():
    """A surface FMO-CD3 tube: FITC carries no stain, so CD4 and CD8 T cells are FITC-negative."""
    rng = np.random.default_rng(12)
    spec = next(t for t in TUBES if t.role == "fmo" and t.fmo_marker == "CD3")
    tube = simulate_tube(draw_composition(rng), spec, 20000, rng)
    return tube.events.astype(np.float64), list(ins.CHANNEL_NAMES), tube.kind == KIND_LYMPH


@pytest.mark.parametrize("source", [4, 5])   # BV421 (CD4), APC-H7 (CD8): bright only on CD3+ cells
@pytest.mark.parametrize("delta", [0.1, -0.1])
def test_fmo_tube_shows_pairs_a_stained_tube_cannot(fmo_cd3, stained, source, delta):
    events, names, lymph = fmo_cd3

    def check(matrix, ev, mask, **kw):
        comp = compensate(ev, names, Spillover(ins.DETECTORS, matrix))
        return residual_spillover({d: comp[:, names.index(d)] for d in ins.DETECTORS}, mask=mask, **kw)

    wrong = ins.SPILLOVER_MATRIX.copy()
    wrong[source, 0] += delta
    src = ins.DETECTORS[source]
    # the stained tube has no CD3-negative CD4/CD8-bright events: the pair is not measured there
    s_events, _, s_lymph, s_cuts = stained
    in_stained = check(wrong, s_events, s_lymph, negative_cuts=s_cuts)
    assert in_stained[(in_stained["source"] == src) & (in_stained["target"] == "FITC-A")].empty
    fmo = dict(mask=lymph, negative_cuts={"FITC-A": np.inf}, targets=["FITC-A"])
    assert set(check(ins.SPILLOVER_MATRIX, events, **fmo)["target"]) == {"FITC-A"}
    assert not check(ins.SPILLOVER_MATRIX, events, **fmo)["flagged"].any()
    row = check(wrong, events, **fmo).set_index("source").loc[src]
    assert row["flagged"] and abs(row["slope"] + delta) < 0.03


def test_negative_coefficients():
    m = ins.SPILLOVER_MATRIX.copy()
    m[4, 2] -= 0.1            # BV421 -> PerCP: 0 in truth, -0.1 here
    m[0, 4] = -0.005          # within the tolerance
    assert negative_coefficients(Spillover(ins.DETECTORS, m)) == [("BV421-A", "PerCP-Cy5-5-A", pytest.approx(-0.1))]
    assert negative_coefficients(ins.true_spillover()) == []


def test_residual_spillover_names_the_source_that_left_the_spillover():
    """A degraded tandem leaves 8 % of source A in the target on A's bright cells; source B is bright
    almost only on A-bright cells (PD1 on CD8+ cells). The partial slope names A, not B (a per-pair
    contrast gave B a slope of about 0.1). Tolerance: slopes within 0.01 of the truth."""
    rng = np.random.default_rng(3)
    n = 20000
    a_pos = rng.random(n) < 0.5
    a = np.where(a_pos, rng.lognormal(np.log(7000), 0.4, n), 0.0) + rng.normal(0, 60, n)
    b = np.where(a_pos & (rng.random(n) < 0.4), rng.lognormal(np.log(2600), 0.5, n), 0.0) + rng.normal(0, 60, n)
    c = np.where(rng.random(n) < 0.3, rng.lognormal(np.log(6000), 0.35, n), 0.0) + rng.normal(0, 60, n)
    target = 0.08 * a + rng.normal(0, 80, n)
    table = residual_spillover({"A": a, "B": b, "C": c, "T": target}, targets=["T"], negative_cuts={"T": np.inf})
    rows = table.set_index("source")
    assert rows.loc["A", "flagged"] and abs(rows.loc["A", "slope"] - 0.08) < 0.01
    assert not rows.loc["B", "flagged"] and abs(rows.loc["B", "slope"]) < 0.01
    assert not rows.loc["C", "flagged"] and abs(rows.loc["C", "slope"]) < 0.01


def test_union_events_is_numpys_union():
    """The residual check's events of the lymphocytes and the singlets (``union_events``, one bool
    mask) are ``np.union1d`` of the two index sets: same values, same dtype (seed 92211)."""
    from tilpheno.spillover import residual_events, union_events

    rng = np.random.default_rng(92211)
    for n in (1, 10, 5000, 200_000):
        lymph, singlets = rng.random(n) < 0.3, rng.random(n) < 0.8
        a, b = residual_events(n, lymph), residual_events(n, singlets)
        got, expected = union_events(n, a, b), np.union1d(a, b)
        assert got.dtype == expected.dtype and np.array_equal(got, expected)
    assert union_events(5, np.empty(0, dtype=np.intp)).size == 0


def test_control_with_pns_copying_pnn_is_told_by_its_one_label(tmp_path):
    """A MACSQuant-style single-stain control: $PnS copies $PnN on every channel but the stained
    one ('CD3'). The copies counted as labels, so 'cannot tell which detector' (3 labelled); a copy
    is no label: the control is its one labelled detector's."""
    import sys

    from tilpheno.io.fcs import read_fcs_metadata
    from tilpheno.spillover import identify_control

    sys.path.insert(0, str(Path(__file__).parent))
    from malformed_fcs import float_file

    channels = ("FSC-A", "SSC-A", "V1-A", "B1-A", "R1-A", "Time")
    labels = {"$P1S": "FSC-A", "$P2S": "SSC-A", "$P3S": "V1-A", "$P4S": "CD3", "$P5S": "R1-A", "$P6S": "Time"}
    path = tmp_path / "control_07.fcs"
    path.write_bytes(float_file(np.ones((3, len(channels))), channels=channels, extra=labels))
    assert identify_control(read_fcs_metadata(path)) == Control(str(path), "B1-A")


@pytest.mark.parametrize("n", [200_000, 30_000, 5_000])
def test_the_check_on_the_union_of_its_event_sets_equals_the_check_on_every_event(n):
    """compensation_check takes only the events its residual check uses (the lymphocytes' and the
    singlets', each subsampled by ``residual_events``) and gives them as masks over their union
    (``events_within``); the result must be the table of the check on full-length arrays, bit for
    bit: 8 % of A left in T on A's bright cells, a viability-like source V checked on the singlets,
    a NaN in one detector (seed 7411)."""
    from tilpheno.spillover import events_within, residual_events, union_events

    rng = np.random.default_rng(7411)
    a_pos, v_pos = rng.random(n) < 0.4, rng.random(n) < 0.15
    values = {"A": np.where(a_pos, rng.lognormal(np.log(7000), 0.4, n), 0.0) + rng.normal(0, 60, n),
              "B": np.where(rng.random(n) < 0.3, rng.lognormal(np.log(5000), 0.4, n), 0.0) + rng.normal(0, 60, n),
              "V": np.where(v_pos, rng.lognormal(np.log(9000), 0.3, n), 0.0) + rng.normal(0, 60, n)}
    values["T"] = 0.08 * values["A"] + 0.05 * values["V"] + rng.normal(0, 80, n)
    values["B"][n // 3] = np.nan
    singlets = rng.random(n) < 0.85
    lymph = singlets & ~v_pos & (rng.random(n) < 0.7)
    cuts = {"T": 400.0, "A": 2000.0}
    used, on_singlets = residual_events(n, lymph), residual_events(n, singlets)
    index = union_events(n, used, on_singlets)
    # the old formulation: full-length arrays, NaN off the used events
    full = {d: np.full(n, np.nan) for d in values}
    for d, v in values.items():
        full[d][index] = v[index]
    expected = residual_spillover(full, negative_cuts=cuts, mask=lymph, source_masks={"V": singlets})
    got = residual_spillover({d: v[index] for d, v in values.items()}, negative_cuts=cuts,
                             mask=events_within(index, used), source_masks={"V": events_within(index, on_singlets)})
    assert len(expected) and expected["flagged"].any()
    pd.testing.assert_frame_equal(got, expected, check_exact=True)
    # one event set (no source checked elsewhere): its events' values alone, no mask
    alone = {d: np.full(n, np.nan) for d in values}
    for d, v in values.items():
        alone[d][used] = v[used]
    expected = residual_spillover(alone, negative_cuts=cuts, mask=lymph)
    got = residual_spillover({d: v[used] for d, v in values.items()}, negative_cuts=cuts)
    assert len(expected) or n < 10_000   # 5,000 events: too few lymphocyte negatives for any pair
    pd.testing.assert_frame_equal(got, expected, check_exact=True)


def test_the_lever_read_off_the_order_is_numpys_quantile_and_medians():
    """The residual check's lever (``_lever``, read off the values' order: selected, or sorted when
    they hold a zero) is the difference of ``np.median`` of the
    values at or above ``np.quantile``'s bright cut and at or below its dim cut, bit for bit: odd and
    even counts, heavy ties (rounded values, a constant run at a cut), a single value (seed 45311)."""
    from tilpheno.spillover import _lever

    def by_masks(x, low, bright):
        lo_cut, hi_cut = np.quantile(x, [low, 1.0 - bright])
        return float(np.median(x[x >= hi_cut]) - np.median(x[x <= lo_cut]))

    rng = np.random.default_rng(45311)
    for n in (1, 2, 3, 10, 101, 1000, 20_000):
        for x in (rng.normal(0, 60, n) + np.where(rng.random(n) < 0.3, rng.lognormal(8, 0.4, n), 0.0),
                  np.round(rng.normal(0, 3, n)), np.where(rng.random(n) < 0.5, 7.0, rng.normal(7, 1, n))):
            for low, bright in ((0.2, 0.05), (0.5, 0.5), (0.01, 0.3)):
                assert _lever(x, low_fraction=low, bright_fraction=bright) == by_masks(x, low, bright)
