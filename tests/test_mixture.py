"""``tilpheno.gates.mixture`` against its oracle, scikit-learn's ``GaussianMixture`` (same model,
same EM, same stopping rule; a different random stream for the k-means++ seeds), and against the
known parameters of simulated clusters. Tolerances are stated per assertion: EM stops when the mean
log-likelihood moves by less than 1e-3, so two fits that reach the same optimum from different
starts agree to about 1e-3 of the data's scale, not bit for bit.
"""
from pathlib import Path

import numpy as np
import pytest
from scipy.ndimage import maximum_filter
from scipy.stats import multivariate_normal

from tilpheno.gates.mixture import fit_best_mixture, fit_gaussian_mixture, ridgeline_ratio
from tilpheno.io.fcs import read_fcs

sklearn_mixture = pytest.importorskip("sklearn.mixture")

CLUSTERS = {   # (weight, mean, covariance) of each simulated component, scatter-like units 0..1
    1: [(1.0, [0.30, 0.10], [[0.004, 0.001], [0.001, 0.002]])],
    2: [(0.6, [0.30, 0.10], [[0.004, 0.001], [0.001, 0.002]]),
        (0.4, [0.60, 0.40], [[0.010, 0.003], [0.003, 0.020]])],
    3: [(0.5, [0.30, 0.10], [[0.004, 0.001], [0.001, 0.002]]),
        (0.3, [0.60, 0.40], [[0.010, 0.003], [0.003, 0.020]]),
        (0.2, [0.15, 0.60], [[0.002, 0.000], [0.000, 0.003]])],
}


def _draw(k: int, seed: int, n: int = 10000) -> np.ndarray:
    rng = np.random.default_rng(seed)
    sizes = rng.multinomial(n, [w for w, _, _ in CLUSTERS[k]])
    return np.vstack([rng.multivariate_normal(m, c, size) for (_, m, c), size in zip(CLUSTERS[k], sizes)])


def _oracle(x: np.ndarray, k: int):
    return sklearn_mixture.GaussianMixture(k, covariance_type="full", random_state=0, n_init=1, reg_covar=1e-6).fit(x)


def _by_first_mean(weights, means, covariances):
    order = np.argsort(means[:, 0])
    return weights[order], means[order], covariances[order]


@pytest.mark.parametrize("k", [1, 2, 3])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fit_equals_scikit_learn_on_separated_clusters(k, seed):
    x = _draw(k, seed)
    ours = fit_gaussian_mixture(x, k, seed=0)
    oracle = _oracle(x, k)
    w, m, c = _by_first_mean(ours.weights, ours.means, ours.covariances)
    ow, om, oc = _by_first_mean(oracle.weights_, oracle.means_, oracle.covariances_)
    np.testing.assert_allclose(w, ow, atol=2e-3)          # weights, absolute
    np.testing.assert_allclose(m, om, atol=2e-3)          # means, data units (0..1)
    np.testing.assert_allclose(c, oc, atol=2e-4)          # covariances, data units squared (~1e-3..2e-2)
    assert ours.bic == pytest.approx(oracle.bic(x), rel=1e-4)
    assert ours.converged and oracle.converged_


@pytest.mark.parametrize("k", [1, 2, 3])
def test_fit_recovers_the_simulated_parameters(k):
    x = _draw(k, seed=10 + k, n=20000)
    ours = fit_gaussian_mixture(x, k, seed=0)
    w, m, c = _by_first_mean(ours.weights, ours.means, ours.covariances)
    tw, tm, tc = _by_first_mean(*(np.array([comp[i] for comp in CLUSTERS[k]], dtype=float) for i in range(3)))
    np.testing.assert_allclose(w, tw, atol=0.02)          # sampling error of a 20,000-event draw
    np.testing.assert_allclose(m, tm, atol=0.01)
    np.testing.assert_allclose(c, tc, atol=0.002)


@pytest.mark.parametrize("k", [1, 2, 3])
def test_bic_chooses_the_same_number_of_components_as_scikit_learn_and_the_truth(k):
    x = _draw(k, seed=20 + k)
    best = fit_best_mixture(x, 4, seed=0)
    oracle_bics = [_oracle(x, j).bic(x) for j in range(1, 5)]
    assert best.n_components == int(np.argmin(oracle_bics)) + 1 == k


def test_fit_is_deterministic_bit_for_bit_and_none_without_components():
    x = _draw(3, seed=4)
    a, b = fit_best_mixture(x, 3, seed=7), fit_best_mixture(x, 3, seed=7)
    assert a.bic == b.bic and np.array_equal(a.means, b.means) and np.array_equal(a.covariances, b.covariances)
    assert fit_best_mixture(x, 0, seed=7) is None


def test_lymphocyte_component_on_real_scatter_equals_scikit_learn():
    """FSC-A/SSC-A of a real file (flowio's test file 100715.fcs, a FACSAria; first 10,000 events):
    the heaviest component of the BIC-chosen fit, the one the lymphocyte gate is built on."""
    sample = read_fcs(Path(__file__).parent / "data" / "fcs" / "flowio" / "100715.fcs")
    names = sample.channel_names
    x = np.column_stack([sample.events[:10000, names.index(n)] for n in ("FSC-A", "SSC-A")]).astype(float) / 262143.0
    ours = fit_best_mixture(x, 3, seed=0)
    oracle_fits = [_oracle(x, j) for j in (1, 2, 3)]
    oracle = oracle_fits[int(np.argmin([f.bic(x) for f in oracle_fits]))]
    assert ours.n_components == oracle.n_components
    main, omain = int(np.argmax(ours.weights)), int(np.argmax(oracle.weights_))
    assert ours.weights[main] == pytest.approx(oracle.weights_[omain], abs=0.01)
    np.testing.assert_allclose(ours.means[main], oracle.means_[omain], atol=0.005)      # 0.5 % of full scale
    np.testing.assert_allclose(ours.covariances[main], oracle.covariances_[omain], rtol=0.05, atol=1e-5)


def _segment_ratio(weights, means, covariance, steps=4001) -> float:
    """The ridgeline ratio by brute force for two components with one covariance: the ridgeline is
    then the segment between the means; scipy's densities on a fine grid of it."""
    t = np.linspace(0.0, 1.0, steps)[:, None]
    points = means[0] + t * (means[1] - means[0])
    density = sum(w * multivariate_normal(m, covariance).pdf(points) for w, m in zip(weights / weights.sum(), means))
    inner = np.flatnonzero((density[1:-1] >= density[:-2]) & (density[1:-1] >= density[2:])) + 1
    peaks = sorted({*inner.tolist(), *([0] if density[0] > density[1] else []),
                    *([steps - 1] if density[-1] > density[-2] else [])})
    return float(density[peaks[0]:peaks[-1] + 1].min() / min(density[peaks[0]], density[peaks[-1]]))


@pytest.mark.parametrize("separation, weight", [(1.5, 0.5), (2.0, 0.5), (2.5, 0.5), (3.0, 0.5), (4.0, 0.5), (6.0, 0.5),
                                                (3.0, 0.8), (4.0, 0.9), (5.0, 0.7)])
def test_ridgeline_ratio_matches_the_density_along_the_segment(separation, weight):
    """Equal covariances (the ridgeline is the segment between the means): the ratio equals the
    brute-force one within the grid's resolution; one mode (separation <= 2 SDs at equal weights,
    Ray & Lindsay 2005) gives 1.0."""
    covariance = np.array([[0.004, 0.001], [0.001, 0.002]])
    direction = np.array([1.0, 0.5]) / np.sqrt(np.array([1.0, 0.5]) @ np.linalg.inv(covariance) @ np.array([1.0, 0.5]))
    means = np.array([[0.3, 0.1], [0.3, 0.1] + separation * direction])
    weights = np.array([weight, 1.0 - weight])
    got = ridgeline_ratio(weights, means, np.array([covariance, covariance]))
    assert got == pytest.approx(_segment_ratio(weights, means, covariance), abs=2e-3)
    if weight == 0.5 and separation <= 2.0:
        assert got == 1.0


def test_ridgeline_ratio_counts_modes_of_unequal_components():
    """Unequal covariances: 1.0 exactly when the 2-D mixture density (scipy, a fine grid) has one local
    maximum; below 1 when it has two."""
    narrow, broad = np.array([[0.004, 0.001], [0.001, 0.002]]), np.array([[0.012, 0.002], [0.002, 0.008]])
    grid = np.stack(np.meshgrid(np.linspace(-0.2, 1.0, 601), np.linspace(-0.3, 0.8, 551)), axis=-1)
    for second_mean, weight in (([0.40, 0.20], 0.6), ([0.45, 0.30], 0.3), ([0.60, 0.40], 0.5), ([0.70, 0.45], 0.8)):
        means = np.array([[0.3, 0.1], second_mean])
        density = weight * multivariate_normal(means[0], narrow).pdf(grid) + \
            (1 - weight) * multivariate_normal(means[1], broad).pdf(grid)
        modes = int(((density == maximum_filter(density, size=5)) & (density > 1e-3 * density.max())).sum())
        ratio = ridgeline_ratio(np.array([weight, 1 - weight]), means, np.array([narrow, broad]))
        assert (ratio == 1.0) == (modes == 1), (second_mean, weight, ratio, modes)
