"""FlowJo 10 workspace import: counts against FlowJo's stored counts and against hand-computed truth.

Data: tests/data/flowjo (FlowKit's simple_line_example, BSD-3): 100 events on the horizontal
line channel_B = 131072, channel_A = 65536 .. 131072 in equal steps.
"""
from pathlib import Path

import numpy as np
import pytest

from tilpheno import read_fcs
from tilpheno.errors import StrategyError
from tilpheno.gates.flowjo import (
    apply_workspace,
    near_boundary_counts,
    population_counts,
    read_workspace,
    workspace_groups,
)

DATA = Path(__file__).parent / "data" / "flowjo"
LINE = DATA / "data_set_simple_line_100.fcs"


@pytest.fixture(scope="module")
def line():
    return read_fcs(LINE)


def counts(wsp, group, fcs):
    return population_counts(read_workspace(DATA / wsp, group), fcs.events, fcs.channel_names).set_index("population")


def test_line_fixture(line):
    a, b = line.events[:, 0], line.events[:, 1]
    assert line.n_events == 100 and np.all(b == 131072) and a[0] == 65536 and a[-1] == 131072


def test_ellipse_matches_flowjo_stored_count(line):
    table = counts("single_ellipse_51_events.wsp", "All Samples", line)
    row = table.loc["ellipse1"]
    assert row["flowjo_count"] == 51  # FlowJo's own count, stored in the workspace
    assert row["count"] == 51
    assert row["near_boundary"] <= 10  # the tolerance FlowJo's binning leaves; 0 difference reached


def test_ellipse_membership_by_focal_definition(line):
    """Independent truth: on the display scale (bins / 256), sum of distances to the foci <= 2a."""
    foci = np.array([[62.7724519002, 157.4044547167], [94.2275480998, 93.5955452833]]) / 256
    edge = np.array([[96, 90], [61, 161]]) / 256  # major-axis end points
    two_a = np.linalg.norm(edge[0] - edge[1])
    xy = line.events / 262144  # linear display 0..262144
    inside = np.linalg.norm(xy - foci[0], axis=1) + np.linalg.norm(xy - foci[1], axis=1) <= two_a
    got = apply_workspace(read_workspace(DATA / "single_ellipse_51_events.wsp"), line.events, line.channel_names)["ellipse1"]
    assert inside.sum() == 51
    assert np.array_equal(got, inside)


def test_rectangles_exact_and_polygon_within_binning_tolerance(line):
    table = counts("simple_poly_and_rect_v2_poly50.wsp", "my_group", line)
    rect = table.loc["rect1"]
    assert rect["gate"] == "rectangle" and rect["count"] == rect["flowjo_count"] == 0
    poly = table.loc["poly1"]
    # FlowJo stored 0; the exact count is 50. The polygon's top edge runs almost along the event
    # line, so every event is within one display bin of the boundary and FlowJo's binned result
    # is not determined to better than that.
    assert poly["near_boundary"] == 100
    assert abs(poly["count"] - poly["flowjo_count"]) <= poly["near_boundary"]


def test_polygon_exact_count_from_edge_crossing(line):
    """Independent truth for poly1 (v2): events left of where the top edge crosses y = 131072."""
    (x1, y1), (x2, y2) = (58928.5714285714, 131668.6159844054), (136675.8241758242, 130495.126705653)
    crossing = x1 + (131072 - y1) * (x2 - x1) / (y2 - y1)
    expected = (line.events[:, 0] < crossing) & (line.events[:, 0] >= 58928.5714285714)
    got = apply_workspace(read_workspace(DATA / "simple_poly_and_rect_v2_poly50.wsp", "my_group"),
                          line.events, line.channel_names)["poly1"]
    assert expected.sum() == 50
    assert np.array_equal(got, expected)


def test_uncomputed_counts_read_as_missing(line):
    table = counts("simple_poly_and_rect.wsp", "my_group", line)
    assert table["flowjo_count"].isna().all()  # FlowJo wrote count="-1": never computed
    assert table.loc["poly1", "count"] == 0 and table.loc["rect1", "count"] == 0  # gates lie below the line


def test_groups_and_errors():
    assert workspace_groups(DATA / "simple_poly_and_rect.wsp") == ["All Samples", "Compensation", "my_group"]
    with pytest.raises(StrategyError, match="'nope'.*my_group"):
        read_workspace(DATA / "simple_poly_and_rect.wsp", "nope")
    # the group's samples are listed by name (they were listed by sample id: ['1'])
    with pytest.raises(StrategyError, match=r"'other.fcs'; its samples: \['data_set_simple_line_100.fcs'\]"):
        read_workspace(DATA / "simple_poly_and_rect.wsp", "my_group", sample="other.fcs")
    assert read_workspace(DATA / "simple_poly_and_rect.wsp", "my_group", sample="data_set_simple_line_100.fcs").sample_id == "1"
    # an empty group said it did "not contain a single sample (name one); its samples: []"
    with pytest.raises(StrategyError, match=r"group 'Compensation' has no samples$"):
        read_workspace(DATA / "simple_poly_and_rect.wsp", "Compensation")


# ---------------------------------------------------------------- a synthetic workspace with every feature

NS = ('xmlns:gating="http://www.isac-net.org/std/Gating-ML/v2.0/gating" '
      'xmlns:transforms="http://www.isac-net.org/std/Gating-ML/v2.0/transformations" '
      'xmlns:data-type="http://www.isac-net.org/std/Gating-ML/v2.0/datatypes"')


def dim(name, lo=None, hi=None):
    attrs = (f' gating:min="{lo}"' if lo is not None else "") + (f' gating:max="{hi}"' if hi is not None else "")
    return f'<gating:dimension{attrs}><data-type:fcs-dimension data-type:name="{name}"/></gating:dimension>'


def pop(name, gate, children="", inside=1):
    return (f'<Population name="{name}" count="-1"><Gate><gating:{gate[0]} eventsInside="{inside}">{gate[1]}'
            f'</gating:{gate[0]}></Gate><Subpopulations>{children}</Subpopulations></Population>')


def vertex(x, y):
    return (f'<gating:vertex><gating:coordinate data-type:value="{x}"/>'
            f'<gating:coordinate data-type:value="{y}"/></gating:vertex>')


SYNTHETIC = f"""<?xml version="1.0" encoding="UTF-8"?>
<Workspace version="20.0" flowJoVersion="10.8.1" {NS}>
<Groups><GroupNode name="TIL"><Group name="TIL"><SampleRefs><SampleRef sampleID="7"/></SampleRefs></Group></GroupNode></Groups>
<SampleList><Sample>
 <DataSet uri="file:/data/TIL001_surface_stain.fcs" sampleID="7"/>
 <transforms:spilloverMatrix prefix="Comp-" suffix="" name="Acquisition-defined">
  <data-type:parameters><data-type:parameter data-type:name="FITC-A"/><data-type:parameter data-type:name="PE-A"/></data-type:parameters>
  <transforms:spillover data-type:parameter="FITC-A"><transforms:coefficient data-type:parameter="FITC-A" transforms:value="1"/><transforms:coefficient data-type:parameter="PE-A" transforms:value="0.2"/></transforms:spillover>
  <transforms:spillover data-type:parameter="PE-A"><transforms:coefficient data-type:parameter="FITC-A" transforms:value="0"/><transforms:coefficient data-type:parameter="PE-A" transforms:value="1"/></transforms:spillover>
 </transforms:spilloverMatrix>
 <Transformations>
  <transforms:linear transforms:minRange="0" transforms:maxRange="262144" gain="1"><data-type:parameter data-type:name="FSC-A"/></transforms:linear>
  <transforms:linear transforms:minRange="0" transforms:maxRange="262144" gain="1"><data-type:parameter data-type:name="SSC-A"/></transforms:linear>
  <transforms:logicle transforms:T="262144" transforms:W="0.5" transforms:M="4.5" transforms:A="0"><data-type:parameter data-type:name="Comp-FITC-A"/></transforms:logicle>
  <transforms:logicle transforms:T="262144" transforms:W="0.5" transforms:M="4.5" transforms:A="0"><data-type:parameter data-type:name="Comp-PE-A"/></transforms:logicle>
 </Transformations>
 <SampleNode name="TIL001_surface_stain.fcs" count="1000" sampleID="7"><Subpopulations>
  {pop("Cells", ("PolygonGate", dim("FSC-A") + dim("SSC-A") + vertex(10000, 0) + vertex(200000, 0) + vertex(200000, 150000) + vertex(10000, 150000)),
       pop("CD3+", ("RectangleGate", dim("Comp-FITC-A", 1000)),
           pop("PD1 blob", ("PolygonGate", dim("Comp-FITC-A") + dim("Comp-PE-A") + vertex(1000, 1000) + vertex(100000, 1000) + vertex(1000, 100000))))
       + pop("not debris", ("RectangleGate", dim("FSC-A", None, 30000) + dim("SSC-A", None, 20000)), inside=0)
       + '<NotNode name="CD3-"><Dependents><Dependent name="Cells/CD3+"/></Dependents><Subpopulations/></NotNode>'
       + '<AndNode name="CD3+ and clean"><Dependents><Dependent name="CD3+"/><Dependent name="not debris"/></Dependents><Subpopulations/></AndNode>')}
 </Subpopulations></SampleNode>
</Sample></SampleList></Workspace>"""


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    path = tmp_path_factory.mktemp("wsp") / "til.wsp"
    path.write_text(SYNTHETIC)
    rng = np.random.default_rng(7)
    n = 1000
    true_fitc = np.where(rng.random(n) < 0.6, rng.lognormal(8.5, 1.0, n), rng.normal(0, 300, n))
    pe = rng.lognormal(7, 1.5, n) * np.where(rng.random(n) < 0.5, 1, -0.01)
    events = np.column_stack([rng.uniform(0, 250000, n), rng.uniform(0, 200000, n), true_fitc, pe + 0.2 * true_fitc])
    return read_workspace(path, "TIL"), events, ["FSC-A", "SSC-A", "FITC-A", "PE-A"], true_fitc, pe


def test_synthetic_workspace_by_hand(synthetic):
    from flowutils.transforms import logicle

    s, events, names, fitc, pe = synthetic
    got = apply_workspace(s, events, names)
    fsc, ssc = events[:, 0], events[:, 1]
    cells = (fsc >= 10000) & (fsc < 200000) & (ssc >= 0) & (ssc < 150000)
    cd3 = cells & (fitc >= 1000)  # compensation recovers the true FITC signal
    lx, ly = (logicle(v, None, t=262144, m=4.5, w=0.5, a=0) for v in (fitc, pe))
    l1, l2 = logicle(np.array([1000.0, 100000.0]), None, t=262144, m=4.5, w=0.5, a=0)
    # triangle (1000,1000)-(100000,1000)-(1000,100000) drawn on the logicle display scale: its
    # hypotenuse is straight there (in data units it would be x + y < 101000, a different set)
    blob = cd3 & (lx >= l1) & (ly >= l1) & (lx + ly < l1 + l2)
    assert (blob != (cd3 & (fitc >= 1000) & (pe >= 1000) & (fitc + pe < 101000))).sum() > 10
    not_debris = cells & ~((fsc < 30000) & (ssc < 20000))
    expected = {"Cells": cells, "Cells/CD3+": cd3, "Cells/CD3+/PD1 blob": blob, "Cells/not debris": not_debris,
                "Cells/CD3-": cells & ~cd3, "Cells/CD3+ and clean": cd3 & not_debris}
    assert list(got) == list(expected)
    for path, mask in expected.items():
        assert 0 < mask.sum() < len(mask), path
        mismatch = np.flatnonzero(got[path] != mask)
        assert mismatch.size == 0, (path, mismatch[:5])


def test_synthetic_near_boundary_reaches_the_populations_below_a_polygon(synthetic):
    """FlowJo counts CD3+ (a rectangle) among the Cells it found with its binned polygon, so an
    event within a bin of the Cells edge may be counted differently in CD3+ too: near_boundary
    said 0 for every rectangle and boolean gate, also below a polygon, so a count differing from
    FlowJo's looked like a real disagreement."""
    s, events, names, fitc, _ = synthetic
    near = near_boundary_counts(s, events, names)
    fsc, ssc = events[:, 0], events[:, 1]
    bin_ = 262144 / 256   # FSC and SSC: linear display 0..262144, 256 bins

    def cells(dx, dy):   # the Cells polygon is the box 10000..200000 x 0..150000
        return (fsc + dx >= 10000) & (fsc + dx < 200000) & (ssc + dy >= 0) & (ssc + dy < 150000)

    near_cells = np.logical_or.reduce([cells(dx * bin_, dy * bin_) != cells(0, 0)
                                       for dx in (-1, 0, 1) for dy in (-1, 0, 1) if dx or dy])
    debris = (fsc < 30000) & (ssc < 20000)
    assert near["Cells"] == near_cells.sum() > 0   # uniform scatter: some events within a bin of the edges
    assert near["Cells/CD3+"] == (near_cells & (fitc >= 1000)).sum() > 0
    assert near["Cells/not debris"] == (near_cells & ~debris).sum()
    assert near["Cells/CD3-"] == near_cells.sum()   # a bound: CD3+ and Cells both uncertain there


def test_unsupported_transform_is_named(tmp_path):
    text = SYNTHETIC.replace("transforms:logicle", "transforms:miracle", 2)
    (tmp_path / "w.wsp").write_text(text)
    with pytest.raises(StrategyError, match="Comp-FITC-A.*miracle"):
        read_workspace(tmp_path / "w.wsp", "TIL")


@pytest.mark.parametrize("xform,display", [
    ('<transforms:log transforms:offset="10" transforms:decades="4"><data-type:parameter data-type:name="{p}"/></transforms:log>',
     lambda x: np.log10(x / 10) / 4),
    ('<transforms:fasinh transforms:T="262144" transforms:M="4.5" transforms:A="0" transforms:W="0" transforms:length="256" transforms:maxRange="262144"><data-type:parameter data-type:name="{p}"/></transforms:fasinh>',
     lambda x: np.arcsinh(x * np.sinh(4.5 * np.log(10)) / 262144) / (4.5 * np.log(10))),
])
def test_polygon_on_nonlinear_display_scale(tmp_path, xform, display):
    """A triangle drawn on a log / arcsinh display: straight edges on that scale, computed by hand."""
    tri = vertex(100, 100) + vertex(100000, 100) + vertex(100, 100000)
    text = f"""<?xml version="1.0" encoding="UTF-8"?>
<Workspace version="20.0" flowJoVersion="10.8.1" {NS}>
<Groups><GroupNode name="All Samples"><Group name="All Samples"><SampleRefs><SampleRef sampleID="1"/></SampleRefs></Group></GroupNode></Groups>
<SampleList><Sample><DataSet uri="file:/x/a.fcs" sampleID="1"/>
<Transformations>{xform.format(p="A")}{xform.format(p="B")}</Transformations>
<SampleNode name="a.fcs" count="-1" sampleID="1"><Subpopulations>{pop("tri", ("PolygonGate", dim("A") + dim("B") + tri))}</Subpopulations></SampleNode>
</Sample></SampleList></Workspace>"""
    (tmp_path / "w.wsp").write_text(text)
    rng = np.random.default_rng(3)
    events = 10 ** rng.uniform(1.5, 5.5, size=(3000, 2))
    got = apply_workspace(read_workspace(tmp_path / "w.wsp"), events, ["A", "B"])["tri"]
    dx, dy = display(events[:, 0]), display(events[:, 1])
    lo, hi = display(np.array([100.0, 100000.0]))
    expected = (dx >= lo) & (dy >= lo) & (dx - lo + dy - lo < hi - lo)
    assert 100 < expected.sum() < 2900
    assert (expected != ((events[:, 0] >= 100) & (events[:, 1] >= 100) & (events.sum(axis=1) < 100100))).sum() > 50
    assert np.array_equal(got, expected)


def test_boolean_node_before_the_populations_it_depends_on(line, tmp_path):
    """A boolean node may come before its dependents in the document (FlowJo keeps the user's
    order). 'high/not top' must be high & not high/top, not the 'low/top' defined earlier."""
    body = (pop("low", ("RectangleGate", dim("channel_A", None, 90000)), pop("top", ("RectangleGate", dim("channel_A", 70000))))
            + pop("high", ("RectangleGate", dim("channel_A", 100000)),
                  '<NotNode name="not top"><Dependents><Dependent name="top"/></Dependents><Subpopulations/></NotNode>'
                  '<OrNode name="top or edge"><Dependents><Dependent name="top"/><Dependent name="edge"/></Dependents><Subpopulations/></OrNode>'
                  + pop("top", ("RectangleGate", dim("channel_A", 120000)))
                  + pop("edge", ("RectangleGate", dim("channel_A", None, 105000)))))
    text = SYNTHETIC.split("<SampleNode")[0] + f'<SampleNode name="line" count="100" sampleID="7"><Subpopulations>{body}</Subpopulations></SampleNode></Sample></SampleList></Workspace>'
    a = line.events[:, 0]
    high = a >= 100000
    expected = {"low": a < 90000, "low/top": (a >= 70000) & (a < 90000), "high": high,
                "high/not top": high & (a < 120000), "high/top or edge": high & ((a >= 120000) | (a < 105000)),
                "high/top": high & (a >= 120000), "high/edge": high & (a < 105000)}
    (tmp_path / "w.wsp").write_text(text)
    got = apply_workspace(read_workspace(tmp_path / "w.wsp", "TIL"), line.events, line.channel_names)
    assert list(got) == list(expected)
    for path, mask in expected.items():
        assert 0 < mask.sum() < 100, path
        assert np.array_equal(got[path], mask), (path, int(got[path].sum()), int(mask.sum()))



def test_channels_named_as_flowjo_names_them_and_by_pns(synthetic, tmp_path):
    """FlowJo names a channel 'FITC/A' 'FITC_A' in its workspace (spillover matrix, Comp- dimensions,
    transforms), and a workspace may name a channel by its $PnS: the file's channels are found,
    giving the populations the hand-checked synthetic workspace gives. Both were refused."""
    s, events, names, *_ = synthetic
    expected = apply_workspace(s, events, names)
    text = SYNTHETIC.replace("FITC-A", "FITC_A").replace('"FSC-A"', '"Forward"')
    (tmp_path / "w.wsp").write_text(text)
    renamed = ["FSC-A", "SSC-A", "FITC/A", "PE-A"]
    got = apply_workspace(read_workspace(tmp_path / "w.wsp", "TIL"), events, renamed, ["Forward", "", "CD3", ""])
    assert list(got) == list(expected)
    for path, mask in expected.items():
        assert np.array_equal(got[path], mask), path
    from tilpheno.errors import GatingError

    with pytest.raises(GatingError, match=r"'FITC_A' is ambiguous: it is FlowJo's name for 'FITC/A' and the \$PnS of 'PE-A'"):
        apply_workspace(read_workspace(tmp_path / "w.wsp", "TIL"), events, renamed, ["Forward", "", "", "FITC_A"])


@pytest.mark.parametrize("old,new,named", [
    ('transforms:W="0.5" transforms:M="4.5" transforms:A="0"><data-type:parameter data-type:name="Comp-PE-A"',
     'transforms:W="3" transforms:M="4.5" transforms:A="0"><data-type:parameter data-type:name="Comp-PE-A"',
     r"sample 'TIL001_surface_stain.fcs' parameter 'Comp-PE-A': logicle transform \(T=262144, W=3, M=4.5, A=0\): W must"),
    ('<transforms:linear transforms:minRange="0" transforms:maxRange="262144" gain="1"><data-type:parameter data-type:name="SSC-A"/></transforms:linear>',
     '<transforms:log transforms:offset="0" transforms:decades="4"><data-type:parameter data-type:name="SSC-A"/></transforms:log>',
     r"parameter 'SSC-A': log transform \(offset=0, decades=4\): offset and decades must be > 0"),
    ('<transforms:coefficient data-type:parameter="FITC-A" transforms:value="0"/>', "",
     r"spilloverMatrix 'Acquisition-defined': the row of 'PE-A' has 1 coefficients for 2 parameters"),
], ids=["logicle-W", "log-offset", "spillover-row"])
def test_a_bad_display_transform_or_spillover_row_is_named(tmp_path, old, new, named):
    """A logicle W > M/2 was taken (a scale flowutils computes but no one drew: 0 at 0.67, 10^5 at 0.81);
    a log offset of 0 failed later as 'a non-finite vertex'; a spillover row short of a coefficient was a
    numpy ValueError traceback."""
    assert SYNTHETIC.count(old) == 1
    (tmp_path / "w.wsp").write_text(SYNTHETIC.replace(old, new))
    with pytest.raises(StrategyError, match=f"^{tmp_path / 'w.wsp'}: .*{named}"):
        read_workspace(tmp_path / "w.wsp", "TIL")
