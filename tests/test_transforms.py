"""Transforms: logicle against flowutils' exact implementation, inverses, arcsinh, parameters."""
import numpy as np
import pytest
from flowutils import transforms as fu
from memory_support import peak_bytes

from tilpheno.transforms import (
    LOGICLE_TOLERANCE,
    Arcsinh,
    Linear,
    Logicle,
    default_transform,
    transform_from_dict,
)

FULL_RANGE = np.concatenate(
    [
        -np.logspace(-3, np.log10(262144), 4000),
        [0.0],
        np.logspace(-3, np.log10(10 * 262144), 4000),
        np.linspace(-500, 500, 2001),
        np.random.default_rng(5).normal(0, 2000, 5000),
    ]
)


@pytest.mark.parametrize(
    "t,w,m,a",
    [(262144, 0.5, 4.5, 0), (262144, 1.0, 4.5, 0), (262144, 0.25, 4.0, 0.5), (10000, 0.5, 4.5, 0), (262144, 0.0, 4.5, 0)],
)
def test_logicle_matches_flowutils_over_full_range(t, w, m, a):
    ours = Logicle(t, w, m, a).apply(FULL_RANGE)
    ref = fu.logicle(FULL_RANGE.copy(), None, t=t, m=m, w=w, a=a)
    assert np.max(np.abs(ours - ref)) < LOGICLE_TOLERANCE


def test_logicle_landmarks():
    lg = Logicle()
    y = lg.apply(np.array([0.0, 262144.0]))
    assert y[0] == pytest.approx(0.5 / 4.5, abs=1e-9)  # zero sits at W/(M+A)
    assert y[1] == pytest.approx(1.0, abs=LOGICLE_TOLERANCE)  # T maps to the top of the scale


def test_logicle_inverse_is_exact_inverse_of_flowutils():
    lg = Logicle()
    y = fu.logicle(FULL_RANGE.copy(), None)
    back = lg.inverse(y)
    assert np.allclose(back, FULL_RANGE, rtol=1e-9, atol=1e-6)


def test_logicle_round_trip_and_shape():
    lg = Logicle(w=1.0)
    x = np.random.default_rng(1).normal(300, 4000, (500, 3))
    y = lg.apply(x)
    assert y.shape == x.shape and y.dtype == np.float64
    assert np.allclose(lg.inverse(y), x, rtol=1e-5, atol=1e-3)
    assert np.all(np.diff(lg.apply(np.sort(x.ravel()))) >= 0)  # monotone


def test_logicle_nan_and_input_untouched():
    x = np.array([np.nan, -5.0, 5.0])
    before = x.copy()
    y = Logicle().apply(x)
    assert np.isnan(y[0]) and np.all(np.isfinite(y[1:]))
    assert np.array_equal(x, before, equal_nan=True)


def test_logicle_rejects_bad_parameters():
    with pytest.raises(ValueError, match="logicle parameters"):
        Logicle(w=3.0, m=4.5)
    with pytest.raises(ValueError):
        Logicle(t=-1)


def test_arcsinh_and_linear():
    x = np.array([-1000.0, 0.0, 150.0, 1e5])
    ar = Arcsinh(cofactor=150)
    assert np.allclose(ar.apply(x), np.log(x / 150 + np.sqrt((x / 150) ** 2 + 1)))
    assert np.allclose(ar.inverse(ar.apply(x)), x)
    lin = Linear()
    assert np.array_equal(lin.apply(x), x) and np.array_equal(lin.inverse(x), x)
    with pytest.raises(ValueError):
        Arcsinh(cofactor=0)


def test_from_dict_round_trip_and_errors():
    for tr in (Logicle(t=100000, w=0.7), Arcsinh(cofactor=5), Linear()):
        assert transform_from_dict(tr.to_dict()) == tr
    with pytest.raises(ValueError, match="unknown transform kind"):
        transform_from_dict({"kind": "log10"})
    with pytest.raises(ValueError, match="unknown parameter"):
        transform_from_dict({"kind": "logicle", "cofactor": 5})


def test_defaults_per_dimension():
    assert isinstance(default_transform("FSC-A"), Linear)
    assert isinstance(default_transform("SSC-H"), Linear)
    assert isinstance(default_transform("CD3"), Logicle)


def _closed_form_inverse(lg: Logicle, y: np.ndarray) -> np.ndarray:
    """The inverse written as its formula (Moore & Parks 2012), with NumPy's plain operators."""
    from tilpheno.transforms import _coefficients

    k = _coefficients(lg.t, lg.w, lg.m, lg.a)
    mirror = np.where(y < k.x1, 2.0 * k.x1 - y, y)
    x = k.a * np.exp(k.b * mirror) - k.c * np.exp(-k.d * mirror) + k.f
    return np.where(y < k.x1, -x, x)


@pytest.mark.parametrize("t,w,m,a", [(262144, 0.5, 4.5, 0), (10000, 1.0, 4.5, 0.5), (262144, 0.0, 4.5, 0)])
def test_logicle_inverse_is_its_formula_bit_for_bit_and_leaves_its_input(t, w, m, a):
    """``inverse`` forms the biexponential in place (fewer temporaries): the same bits as the formula written
    out, NaN and infinities included, a 0-d input too; its input unchanged."""
    lg = Logicle(t=t, w=w, m=m, a=a)
    y = np.concatenate([lg.apply(FULL_RANGE), [np.nan, np.inf, -np.inf, 0.0, -0.0]])
    before = y.copy()
    assert np.array_equal(lg.inverse(y).view(np.int64), _closed_form_inverse(lg, y).view(np.int64))
    assert np.array_equal(y.view(np.int64), before.view(np.int64))
    one = lg.inverse(np.float64(0.1))
    assert one.shape == () and one.tobytes() == _closed_form_inverse(lg, np.asarray(0.1)).tobytes()


def test_logicle_inverse_holds_at_most_three_arrays_of_its_input_at_once():
    """Memory traffic: ``inverse`` of 10^6 values holds at its peak (tracemalloc: NumPy's allocations) at most
    3.25x the input's bytes: the biexponential's value, its negation and the selection of the two, and the mask
    (3.125x); the mirrored argument is made the second exponential's array. The formula's six full-size
    temporaries held 4.125x (main before stop 63)."""
    lg = Logicle()
    y = lg.apply(np.random.default_rng(3).normal(300, 3000, 1_000_000))
    lg.inverse(y[:10])   # the coefficients' cache
    result, peak = peak_bytes(lambda: lg.inverse(y))
    assert result.nbytes == y.nbytes
    assert peak <= 3.25 * y.nbytes, peak / y.nbytes
