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


def test_a_pool_lends_a_block_again_only_when_no_array_uses_it(sample):
    """compensate_columns into a BlockPool's blocks: the values equal the full compensate's bit for
    bit; a block is written again only once every array over it (here one row) is gone."""
    from tilpheno.compensation import BlockPool

    spill = sample.spillover
    names = list(sample.channel_names)
    wanted = list(spill.detectors) + ["FSC-A"]
    full = compensate(sample.events, names, spill)
    truth = {w: full[:, names.index(w)] for w in wanted}
    pool = BlockPool()
    kept = compensate_columns(sample.events, names, spill, wanted, pool)[wanted[0]]   # one row stays in use
    again = compensate_columns(sample.events, names, spill, wanted, pool)
    assert pool.allocated == 2 and not np.shares_memory(kept, again[wanted[0]])
    again[wanted[0]][:] = -1.0   # writing the second block leaves the first untouched
    np.testing.assert_array_equal(kept, truth[wanted[0]])
    del kept, again
    third = compensate_columns(sample.events, names, spill, wanted, pool)
    assert pool.allocated == 2   # a free block lent again, not a new one
    for w in wanted:
        np.testing.assert_array_equal(third[w], truth[w])
        assert third[w].flags.c_contiguous and third[w].flags.writeable


def test_a_products_files_write_into_the_blocks_of_files_released_before(monkeypatch, tmp_path):
    """analyze_product as the pipeline runs it (files released one after the other, the plots
    keeping a subsample: 30,000 events > PLOT_EVENTS): fewer blocks are made than files
    compensated, and the phenotype, tables and flags equal those of the same analysis with a new
    block for every file."""
    import pandas as pd

    import tilpheno.phenotype as ph
    from tilpheno.compensation import BlockPool
    from tilpheno.gates.strategy import load_strategy
    from tilpheno.simulate.cohort import manifest_rows
    from tilpheno.study import default_study

    class Counted(BlockPool):
        made: list = []

        def __init__(self):
            super().__init__()
            self.taken = 0
            Counted.made.append(self)

        def take(self, rows, columns):
            self.taken += 1
            return super().take(rows, columns)

    class Fresh(BlockPool):   # a new block for every file
        def take(self, rows, columns):
            return np.empty((rows, columns))

    sim = simulate_product("TIL001", 7, 30_000)
    write_product(sim, tmp_path)
    rows = pd.DataFrame(manifest_rows(sim))
    rows["file"] = [str(tmp_path / f) for f in rows["file"]]
    strategies = [load_strategy(p) for p in default_study().strategy_paths]

    def analysed(pool):
        monkeypatch.setattr(ph, "BlockPool", pool)
        result = ph.analyze_product("TIL001", rows, strategies, plot_events=ph.PLOT_EVENTS)
        return (pd.Series(result.phenotype), [(t.populations, t.thresholds) for t in result.tubes],
                [(f.code, f.file, f.message) for f in result.qc])

    pooled, fresh = analysed(Counted), analysed(Fresh)
    (pool,) = Counted.made
    assert 1 <= pool.allocated < pool.taken
    pd.testing.assert_series_equal(pooled[0], fresh[0])
    assert len(pooled[1]) == len(fresh[1])
    for tables, others in zip(pooled[1], fresh[1]):
        for table, other in zip(tables, others):
            pd.testing.assert_frame_equal(table, other)
    assert pooled[2] == fresh[2]


def test_a_workers_next_product_takes_no_new_block(tmp_path):
    """The pipeline's pool kept from product to product (``pipeline.product._blocks``): the second
    product's events and compensated arrays go into the first's blocks, and its tables are those
    of an analysis with a pool of its own; read_fcs into a lent block decodes the same events."""
    import pandas as pd

    from tilpheno.compensation import BlockPool
    from tilpheno.gates.strategy import load_strategy
    from tilpheno.io.fcs import read_fcs
    from tilpheno.phenotype import PLOT_EVENTS, analyze_product
    from tilpheno.pipeline.product import _blocks
    from tilpheno.simulate.cohort import manifest_rows
    from tilpheno.study import default_study

    strategies = [load_strategy(p) for p in default_study().strategy_paths]
    manifests = {}
    for pid, seed in (("TIL001", 7), ("TIL002", 8)):
        sim = simulate_product(pid, seed, 30_000)
        write_product(sim, tmp_path)
        rows = pd.DataFrame(manifest_rows(sim))
        rows["file"] = [str(tmp_path / f) for f in rows["file"]]
        manifests[pid] = rows

    def populations(pid, blocks=None):
        result = analyze_product(pid, manifests[pid], strategies, plot_events=PLOT_EVENTS, blocks=blocks)
        return pd.concat([t.populations for t in result.tubes], ignore_index=True)

    pool = BlockPool()
    populations("TIL001", pool)
    made = pool.allocated
    second = populations("TIL002", pool)
    assert made >= 1 and pool.allocated == made
    pd.testing.assert_frame_equal(second, populations("TIL002"))
    assert _blocks() is _blocks()   # one pool per worker thread
    file = manifests["TIL002"]["file"].iloc[0]
    np.testing.assert_array_equal(read_fcs(file, empty=pool.take).events, read_fcs(file).events)
