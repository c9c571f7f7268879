"""Exports: FCS 3.1 with membership channels (read back by flowio, FlowKit, tilpheno) and AnnData."""
from pathlib import Path

import flowio
import flowkit as fk
import numpy as np
import pytest
from typer.testing import CliRunner

from tilpheno import read_fcs
from tilpheno.cli import app
from tilpheno.compensation import Spillover
from tilpheno.io.export import ExportError, export_fcs, export_h5ad
from tilpheno.io.fcs_write import write_fcs

GML = Path(__file__).parent / "data" / "gatingml"


def truth(name):
    return np.loadtxt(GML / "truth" / f"Results_{name}.txt", dtype=int).astype(bool)


@pytest.fixture(scope="module")
def data1():
    return read_fcs(GML / "data1.fcs")


@pytest.fixture(scope="module")
def masks():
    # independent membership vectors: the Gating-ML compliance truth for data1.fcs
    return {"Polygon1": truth("Polygon1"), "Range1": truth("Range1"), "FL2N-FL4N": truth("FL2N-FL4N")}


def test_fcs_export_read_by_flowio(tmp_path, data1, masks):
    out = export_fcs(data1, masks, tmp_path / "gated.fcs")
    f = flowio.FlowData(str(out))
    assert f.event_count == data1.n_events
    assert f.channel_count == 8 + 3
    events = np.reshape(np.asarray(f.events, dtype=np.float64), (-1, f.channel_count))
    for i, name in enumerate(masks, start=8):
        assert f.pnn_labels[i] == name
        assert np.array_equal(events[:, i], masks[name].astype(float))
    assert np.array_equal(events[:, :8], data1.events.astype(np.float32).astype(np.float64))


def test_fcs_export_read_by_flowkit_and_tilpheno(tmp_path, data1, masks):
    out = export_fcs(data1, masks, tmp_path / "gated.fcs")
    sample = fk.Sample(str(out))
    raw = sample.get_events("raw")
    assert sample.pnn_labels == [*data1.channel_names, *masks]
    assert np.array_equal(raw[:, 8], masks["Polygon1"].astype(float))
    back = read_fcs(out)
    assert np.array_equal(back.events[:, :8], data1.events.astype(np.float32).astype(np.float64))
    assert back.keywords["TILPHENO SOURCE SHA256"] == data1.sha256
    assert back.channels.loc[10, "pns"] == "membership"


def test_fcs_export_keeps_spillover(tmp_path):
    spill = Spillover(("FITC-A", "PE-A"), np.array([[1.0, 0.1], [0.05, 1.0]]))
    events = np.column_stack([np.linspace(0, 1000, 50), np.linspace(1000, 0, 50), np.linspace(10, 20, 50)])
    src = tmp_path / "src.fcs"
    write_fcs(src, events, [("FITC-A", "CD3 FITC", 262144), ("PE-A", "PD1 PE", 262144), ("FSC-A", None, 262144)],
              {"$SRC": "TIL009"}, spillover=spill)
    fcs = read_fcs(src)
    out = export_fcs(fcs, {"high FITC": fcs.events[:, 0] > 500}, tmp_path / "out.fcs")
    back = read_fcs(out)
    assert back.spillover is not None and back.spillover.detectors == spill.detectors
    assert np.allclose(back.spillover.matrix, spill.matrix)
    assert back.keywords["$SRC"] == "TIL009"
    assert int(back.events[:, 3].sum()) == int((np.linspace(0, 1000, 50) > 500).sum())


def test_fcs_export_rejects_bad_masks(tmp_path, data1):
    with pytest.raises(ExportError, match="'FL1-H'"):
        export_fcs(data1, {"FL1-H": np.ones(data1.n_events, bool)}, tmp_path / "x.fcs")
    with pytest.raises(ExportError, match="'short'"):
        export_fcs(data1, {"short": np.ones(10, bool)}, tmp_path / "x.fcs")
    assert not (tmp_path / "x.fcs").exists()


def test_h5ad_export(tmp_path, data1, masks):
    anndata = pytest.importorskip("anndata")
    out = export_h5ad(data1, masks, tmp_path / "gated.h5ad", markers={"FL1-H": "CD4", "FL3-H": "CD3"})
    a = anndata.read_h5ad(out)
    assert a.shape == (data1.n_events, 8)
    assert list(a.var_names) == data1.channel_names
    assert a.var.loc["FL1-H", "marker"] == "CD4" and a.var.loc["FL2-H", "marker"] == ""
    assert a.var.loc["FL3-H", "pns"] == "CD3 PerCP"
    for name, mask in masks.items():
        assert a.obs[name].dtype == bool and np.array_equal(a.obs[name].to_numpy(), mask)
    assert np.array_equal(a.X, data1.events.astype(np.float32))
    assert a.uns["source_sha256"] == data1.sha256


def test_h5ad_export_permissions_follow_the_umask(tmp_path, data1, masks):
    """As the FCS export and every other output; it was mkstemp's 0600 whatever the umask."""
    pytest.importorskip("anndata")
    import os
    import stat

    old = os.umask(0o022)
    try:
        out = export_h5ad(data1, masks, tmp_path / "gated.h5ad")
    finally:
        os.umask(old)
    assert stat.S_IMODE(out.stat().st_mode) == 0o644


def test_cli_export_events(tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, [
        "export-events", str(GML / "data1.fcs"), "--gatingml", str(GML / "gml" / "gml_quadrant1_gate.xml"),
        "--fcs", str(tmp_path / "q.fcs"), "--h5ad", str(tmp_path / "q.h5ad"),
    ])
    assert result.exit_code == 0, result.output
    back = read_fcs(tmp_path / "q.fcs")
    assert back.channel_names[8:] == ["FL2P-FL4P", "FL2N-FL4P", "FL2N-FL4N", "FL2P-FL4N"]
    assert np.array_equal(back.events[:, 10].astype(bool), truth("FL2N-FL4N"))
    assert (tmp_path / "q.h5ad").exists()


def test_cli_export_events_needs_an_output(tmp_path):
    result = CliRunner().invoke(app, ["export-events", str(GML / "data1.fcs"), "--gatingml", str(GML / "gml" / "gml_rect1_gate.xml")])
    assert result.exit_code != 0


@pytest.mark.parametrize("command, option, name", [
    ("apply-gates", "-o", "gates.csv"), ("export-events", "--fcs", "q.fcs"), ("export-events", "--h5ad", "q.h5ad"),
])
def test_a_disk_full_while_exporting_is_one_line_naming_the_file(tmp_path, monkeypatch, command, option, name):
    """The disk fills while the file is written (simulated: fsync, or h5py's write, answers ENOSPC
    with no file named, as the system does). apply-gates and export-events --fcs said 'error: No
    space left on device (disk full)', naming nothing; --h5ad printed h5py's paragraph naming the
    hidden temporary file ('.q.h5ad.x1y2.part'). Now one line names the file asked for; none is left."""
    import errno
    import os

    import anndata

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "Unable to synchronously create file (file write failed: errno = 28, "
                                    f"filename = '{tmp_path}/.{name}.abcd.part')" if name.endswith(".h5ad")
                      else os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    monkeypatch.setattr(anndata.AnnData, "write_h5ad", full)
    target = tmp_path / name
    result = CliRunner().invoke(app, [command, str(GML / "data1.fcs"), "--gatingml", str(GML / "gml" / "gml_rect1_gate.xml"),
                                      option, str(target)])
    assert result.exit_code == 2, result.output
    assert result.output == f"error: {target}: No space left on device (disk full)\n", result.output
    assert list(tmp_path.iterdir()) == []
