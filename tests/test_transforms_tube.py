"""TubeData (read -> compensate -> transform) against FlowKit's independent pipeline."""
import flowkit as fk
import numpy as np
import pytest

from tilpheno.gates.strategy import default_strategy_paths, load_strategy
from tilpheno.io.fcs import read_fcs
from tilpheno.phenotype import load_tube
from tilpheno.simulate.cohort import simulate_product, write_product
from tilpheno.transforms import LOGICLE_TOLERANCE

DETECTORS = {"CD3": "FITC-A", "PD1": "PE-A", "7AAD": "PerCP-Cy5-5-A", "CD56": "APC-A", "CD4": "BV421-A", "CD8": "APC-H7-A"}


@pytest.fixture(scope="module")
def stained_file(tmp_path_factory):
    out = tmp_path_factory.mktemp("tube")
    prod = simulate_product("TIL901", 654, 3000)
    write_product(prod, out)
    return out / "TIL901_surface_stain.fcs"


def test_compensated_logicle_matches_flowkit(stained_file):
    strategy = load_strategy(default_strategy_paths()[0])
    tube = load_tube(read_fcs(stained_file), DETECTORS, strategy, tube="surface", role="stain")
    assert tube.compensated
    sample = fk.Sample(str(stained_file))
    sample.apply_compensation(sample.metadata["spillover"])
    sample.apply_transform(fk.transforms.LogicleTransform(262144, 0.5, 4.5, 0))
    xform = sample.get_events(source="xform")
    raw = sample.get_events(source="raw")
    names = list(sample.pnn_labels)
    for marker, detector in DETECTORS.items():
        assert np.max(np.abs(tube.data[marker] - xform[:, names.index(detector)])) < LOGICLE_TOLERANCE, marker
    for scatter in ("FSC-A", "FSC-H", "SSC-A"):
        assert np.array_equal(tube.data[scatter], raw[:, names.index(scatter)])
    assert set(tube.data) == set(DETECTORS) | {"FSC-A", "FSC-H", "SSC-A"}
    assert all(v.dtype == np.float64 for v in tube.data.values())


def test_without_spillover_data_stay_uncompensated(stained_file):
    strategy = load_strategy(default_strategy_paths()[0])
    fcs = read_fcs(stained_file)
    fcs.spillover = None
    tube = load_tube(fcs, DETECTORS, strategy, tube="surface", role="stain")
    assert not tube.compensated
    sample = fk.Sample(str(stained_file))
    sample.apply_transform(fk.transforms.LogicleTransform(262144, 0.5, 4.5, 0))
    xform = sample.get_events(source="xform")
    names = list(sample.pnn_labels)
    assert np.max(np.abs(tube.data["PD1"] - xform[:, names.index("PE-A")])) < LOGICLE_TOLERANCE
