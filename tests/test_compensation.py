"""Compensation against independent implementations (flowutils, FlowKit) and error handling."""
import numpy as np
import pytest

import tilpheno
from tilpheno.compensation import Spillover, compensate, compensate_columns, exported_compensated, parse_spill_keyword, read_spillover_csv
from tilpheno.errors import CompensationError
from tilpheno.simulate.cohort import simulate_product, write_product

DATA = "tests/data"
FCS = f"{DATA}/fcs/flowkit/test_comp_example.fcs"
CSV = f"{DATA}/compensation/comp_complete_example.csv"
# FlowKit's test data: this file's events as FlowKit read them (float64, 18 channels, time not
# yet multiplied by $TIMESTEP). Despite its name it holds uncompensated values.
NPY = f"{DATA}/compensation/test_comp_example.npy"


@pytest.fixture(scope="module")
def sample():
    return tilpheno.read_fcs(FCS)


def test_raw_events_equal_flowkit_stored_array(sample):
    stored = np.fromfile(NPY, dtype="<f8").reshape(-1, len(sample.channel_names))
    time = sample.channel_names.index("Time")
    others = [i for i in range(stored.shape[1]) if i != time]
    np.testing.assert_array_equal(sample.events[:, others], stored[:, others])
    step = float(sample.keywords["$TIMESTEP"])
    np.testing.assert_allclose(sample.events[:, time], stored[:, time] * step, rtol=1e-12)


def test_csv_matrix_matches_flowutils(sample):
    import flowutils

    spill = read_spillover_csv(CSV)
    ours = compensate(sample.events, sample.channel_names, spill)
    idx = [sample.channel_names.index(d) for d in spill.detectors]
    ref = flowutils.compensate.compensate(sample.events, spill.matrix, idx)
    np.testing.assert_allclose(ours, ref, rtol=1e-10, atol=1e-8)
    untouched = [i for i in range(len(sample.channel_names)) if i not in idx]
    np.testing.assert_array_equal(ours[:, untouched], sample.events[:, untouched])


def test_keyword_matrix_matches_flowkit(sample):
    import flowkit as fk

    assert sample.spillover is not None
    ours = compensate(sample.events, sample.channel_names, sample.spillover)
    fks = fk.Sample(FCS, ignore_offset_error=True)
    fks.apply_compensation(fks.metadata["spill"])
    ref = fks.get_events(source="comp")
    cols = [i for i, n in enumerate(sample.channel_names) if n != "Time"]
    np.testing.assert_allclose(ours[:, cols], ref[:, cols], rtol=1e-9, atol=1e-6)


def test_compensation_inverts_known_spillover():
    rng = np.random.default_rng(1)
    true = rng.gamma(2.0, 500.0, size=(5000, 3))
    matrix = np.array([[1.0, 0.2, 0.05], [0.1, 1.0, 0.3], [0.0, 0.15, 1.0]])
    raw = np.column_stack([rng.normal(size=5000), true @ matrix])
    spill = Spillover(("A", "B", "C"), matrix)
    out = compensate(raw, ["FSC-A", "A", "B", "C"], spill)
    np.testing.assert_allclose(out[:, 1:], true, rtol=1e-9, atol=1e-9)
    np.testing.assert_array_equal(out[:, 0], raw[:, 0])


def test_parse_keyword_layout():
    spill = parse_spill_keyword("2,FL1-A,FL2-A,1,0.1,0.02,1")
    assert spill.detectors == ("FL1-A", "FL2-A")
    np.testing.assert_array_equal(spill.matrix, [[1, 0.1], [0.02, 1]])


@pytest.mark.parametrize(
    "value, problem",
    [
        ("x,A,B,1,0,0,1", "number of detectors"),
        ("2,A,B,1,0,0", "expected 7"),
        ("2,A,B,1,zero,0,1", "non-numeric"),
        ("2,A,A,1,0,0,1", "duplicate"),
        ("2,A,B,1,nan,0,1", "non-finite"),
    ],
)
def test_bad_keyword_values_name_the_problem(value, problem):
    with pytest.raises(CompensationError, match=problem):
        parse_spill_keyword(value)


def test_missing_detector_and_singular_matrix():
    events = np.ones((4, 2))
    with pytest.raises(CompensationError, match=r"'C'.*not among"):
        compensate(events, ["A", "B"], Spillover(("A", "C"), np.eye(2)))
    with pytest.raises(CompensationError, match="singular"):
        compensate(events, ["A", "B"], Spillover(("A", "B"), np.ones((2, 2))))


@pytest.mark.parametrize("detectors, expected", [
    (["FJComp-355 379_28-A", "FJComp-561 585_15-A"], True),   # FlowJo 10 export (the FlowAtlas files)
    (["Comp-FITC-A", "Comp-PE-A"], True),                      # FlowJo 9
    (["FJComp-FITC-A", "PE-A"], False),                        # one raw detector: not all compensated
    (["FITC-A", "PE-A"], False),
    (["fjcomp-FITC-A"], False),                                # the prefixes are written as they are
    ([], False),
])
def test_exported_compensated(detectors, expected):
    assert exported_compensated(detectors) is expected


def test_a_matrix_on_compensated_export_parameters_names_them():
    events = np.ones((4, 2))
    with pytest.raises(CompensationError, match=r"'B'\].*FJComp-B.*already compensated"):
        compensate(events, ["A", "FJComp-B"], Spillover(("A", "B"), np.eye(2)))
    with pytest.raises(CompensationError) as plain:
        compensate(events, ["A", "D"], Spillover(("A", "B"), np.eye(2)))
    assert "already compensated" not in str(plain.value)


def test_unreadable_csv_names_file(tmp_path):
    bad = tmp_path / "m.csv"
    bad.write_text("A,B\n1,x\n0,1\n")
    with pytest.raises(CompensationError, match="m.csv"):
        read_spillover_csv(bad)


@pytest.mark.parametrize("content", [b"matrix exported from FlowJo\n", b"FITC-A\n", b"\x00\x01binary",
                                     b"FITC-A,PE-A\n", b"FITC-A\nPE-A\n"])
def test_a_csv_without_a_matrix_is_refused_not_an_empty_matrix(tmp_path, content):
    """A file of one line (a note, a lone detector name, a binary file read as text) was read as a 0x0
    matrix: `process --compensation` applied it to no detector, left every file uncompensated, and
    recorded it in run.json and compensation.csv as the run's matrix (exit 0) -> refused, naming the
    file, before any product runs (exit 2, no OUT). A header only, or names without values, said
    'matrix is 0x1 but names 1 detectors' (or '1x0 ... 0'): now the same line."""
    from typer.testing import CliRunner

    from tilpheno.cli import app

    bad = tmp_path / "m.csv"
    bad.write_bytes(content)
    with pytest.raises(CompensationError, match=r"m.csv: no spillover matrix in the file \(a header"):
        read_spillover_csv(bad)
    folder = tmp_path / "in"
    folder.mkdir()
    write_product(simulate_product("P1", 3, 2000), folder)
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["process", str(folder), "-o", str(out), "--compensation", str(bad)])
    assert result.exit_code == 2 and result.output.startswith(f"error: {bad}: "), result.output
    assert not out.exists()


def test_csv_rows_named_in_another_order_than_the_header_are_matched_by_name(tmp_path):
    # a matrix whose rows were sorted apart from its columns: each row is placed by its name
    m = tmp_path / "m.csv"
    m.write_text(",A,B,C\nC,0,0.3,1\nA,1,0.1,0.02\nB,0.05,1,0\n")
    s = read_spillover_csv(m)
    assert s.detectors == ("A", "B", "C")
    np.testing.assert_array_equal(s.matrix, [[1, 0.1, 0.02], [0.05, 1, 0], [0, 0.3, 1]])
    # row names that are not detectors (fluorochromes) keep the file's order
    f = tmp_path / "f.csv"
    f.write_text(",A-A,B-A\nA,1,0.1\nB,0.2,1\n")
    np.testing.assert_array_equal(read_spillover_csv(f).matrix, [[1, 0.1], [0.2, 1]])
    bad = tmp_path / "bad.csv"
    bad.write_text(",A,B\nA,1,0.1\nX,0.2,1\n")
    with pytest.raises(CompensationError, match=r"bad.csv: row 2 \(line 3\) is named 'X'"):
        read_spillover_csv(bad)


@pytest.mark.parametrize("perturb", [0.0, 1e-9])
def test_a_repeated_row_is_singular_even_when_it_inverts_numerically(perturb):
    # the simulated Fortessa's matrix with its BV421 row repeated (or nearly: rounding) as the
    # APC-H7 row: np.linalg.inv does not raise but "inverts" it to values of 1e9-1e20, which
    # compensation would spread over every event
    from tilpheno.simulate.instrument import DETECTORS, SPILLOVER_MATRIX

    m = np.vstack([SPILLOVER_MATRIX[:5], SPILLOVER_MATRIX[4:5] + perturb])
    spill = Spillover(DETECTORS, m, "m.csv")
    with pytest.raises(CompensationError, match=r"m.csv: matrix is singular \(condition number"):
        compensate(np.ones((4, 6)), DETECTORS, spill)
    with pytest.raises(CompensationError, match="singular"):
        compensate_columns(np.ones((4, 6)), DETECTORS, spill, ["PE-A"])


@pytest.mark.parametrize("text", [
    "A;B\n1;0,125\n0,05;1\n",          # European Excel: semicolons, decimal comma
    ";A;B\nA;1;0,125\nB;0,05;1\n",     # the same with row names
    "A;B\n1;0.125\n0.05;1\n",          # semicolons, decimal point
    "A\tB\n1\t0.125\n0.05\t1\n",       # tab-separated (a copy from a spreadsheet)
])
def test_csv_separated_by_semicolons_or_tabs(tmp_path, text):
    path = tmp_path / "m.csv"
    path.write_text(text)
    s = read_spillover_csv(path)
    assert s.detectors == ("A", "B")
    np.testing.assert_array_equal(s.matrix, [[1, 0.125], [0.05, 1]])


def test_a_matrix_in_percent_is_refused(tmp_path):
    # FlowJo's and FACSDiva's matrix editors show percentages; a CSV typed from them would divide
    # every compensated value by about 100 and mix the detectors
    path = tmp_path / "pct.csv"
    path.write_text("A,B\n100,12.5\n5,100\n")
    with pytest.raises(CompensationError, match=r"pct.csv: the diagonal is 100, not 1: values in percent"):
        read_spillover_csv(path)
