"""Gaussian mixtures for the automatic 2-D gates (lymphocytes on scatter, one cluster on two markers).

The model and its fit are those of scikit-learn's ``GaussianMixture(k, covariance_type="full",
init_params="kmeans", n_init=1, reg_covar=1e-6, tol=1e-3, max_iter=100)``, which is the test
oracle (``tests/test_mixture.py``): k-means++ seeding (greedy, ``2 + floor(ln k)`` candidates per
centre) then Lloyd's k-means (at most 300 iterations, stop when the squared centre shift is at most
1e-4 x the mean per-dimension variance) give the starting responsibilities; EM runs until the mean
log-likelihood per event changes by less than ``tol``; ``reg_covar`` is added to every covariance's
diagonal. The number of components is chosen by BIC, -2 n L + p ln n with L the mean log-likelihood
and p = k d + k d (d + 1) / 2 + k - 1 free parameters.

Why not scikit-learn itself: importing ``sklearn.mixture`` costs about 1.3 s per process (it
imports ``sklearn.cluster``, ``sklearn.metrics`` and ``scipy.stats``), most of the serial start-up
of a ``--jobs N`` run (issue 18), and each fit spends most of its time in input validation; this
module needs numpy only. Random numbers: ``numpy.random.default_rng(seed)``, so a fit is
deterministic bit for bit; it is not the same random stream as scikit-learn's, so a fit can land in
a different local optimum where the data leave the mixture ill-determined.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_LOG_2PI = float(np.log(2.0 * np.pi))


@dataclass(frozen=True)
class MixtureFit:
    """A fitted Gaussian mixture, in the sample's units.

    ``weights`` (k,), ``means`` (k, d), ``covariances`` (k, d, d); ``log_likelihood``: mean per
    event on the fitted sample; ``bic``: -2 n log_likelihood + p ln n; ``converged``/``n_iter``: EM.
    """

    weights: np.ndarray
    means: np.ndarray
    covariances: np.ndarray
    log_likelihood: float
    bic: float
    converged: bool
    n_iter: int

    @property
    def n_components(self) -> int:
        return int(len(self.weights))


def _kmeans_plus_plus(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Greedy k-means++ seeding: each new centre is the best (lowest total squared distance) of
    ``2 + floor(ln k)`` candidates drawn with probability proportional to the squared distance."""
    n = len(x)
    trials = 2 + int(np.log(k))
    centres = np.empty((k, x.shape[1]))
    centres[0] = x[rng.integers(n)]
    closest = ((x - centres[0]) ** 2).sum(axis=1)
    for c in range(1, k):
        total = closest.sum()
        cumulative = np.cumsum(closest)
        picks = np.searchsorted(cumulative, rng.random(trials) * total)
        picks = np.minimum(picks, n - 1)
        d2 = ((x[None, :, :] - x[picks][:, None, :]) ** 2).sum(axis=2)   # (trials, n)
        candidate = np.minimum(closest, d2)
        best = int(np.argmin(candidate.sum(axis=1)))
        centres[c] = x[picks[best]]
        closest = candidate[best]
    return centres


def _squared_distances(x: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Squared Euclidean distance of every centre to every event, (k, n) (components first, so
    that reductions over the few components run along contiguous event rows)."""
    d2 = np.einsum("ij,ij->i", x, x)[None, :] - 2.0 * (centres @ x.T) + np.einsum("ij,ij->i", centres, centres)[:, None]
    return np.maximum(d2, 0.0)


def _kmeans_labels(x: np.ndarray, k: int, rng: np.random.Generator, max_iter: int = 300, tol: float = 1e-4) -> np.ndarray:
    """Lloyd's k-means from k-means++ seeds; the label of every event."""
    centres = _kmeans_plus_plus(x, k, rng)
    limit = tol * float(np.mean(np.var(x, axis=0)))
    for _ in range(max_iter):
        labels = np.argmin(_squared_distances(x, centres), axis=0)
        counts = np.bincount(labels, minlength=k)
        sums = np.stack([np.bincount(labels, weights=x[:, j], minlength=k) for j in range(x.shape[1])], axis=1)
        moved = np.where(counts[:, None] > 0, sums / np.maximum(counts, 1)[:, None], centres)
        shift = float(((moved - centres) ** 2).sum())
        centres = moved
        if shift <= limit:
            break
    return np.argmin(_squared_distances(x, centres), axis=0)


def _m_step(xt: np.ndarray, resp: np.ndarray, reg_covar: float):
    """Weights, means and full covariances (``reg_covar`` on the diagonal) from responsibilities
    ``resp`` (k, n); ``xt`` is the sample transposed, (d, n): every operation runs along the
    events, all components at once."""
    nk = resp.sum(axis=1) + 10 * np.finfo(resp.dtype).eps
    means = (resp @ xt.T) / nk[:, None]
    centred = xt[None, :, :] - means[:, :, None]                                  # (k, d, n)
    covariances = np.matmul(resp[:, None, :] * centred, np.swapaxes(centred, 1, 2)) / nk[:, None, None]
    d = xt.shape[0]
    covariances[:, np.arange(d), np.arange(d)] += reg_covar
    return nk / xt.shape[1], means, covariances


def _log_joint(xt: np.ndarray, weights: np.ndarray, means: np.ndarray, covariances: np.ndarray) -> np.ndarray:
    """log(weight_c) + log N(x | mean_c, cov_c) for every component and event, (k, n); ``xt`` (d, n)."""
    d = xt.shape[0]
    sign, log_det = np.linalg.slogdet(covariances)
    if np.any(sign <= 0):
        raise np.linalg.LinAlgError("a mixture component's covariance is not positive definite")
    centred = xt[None, :, :] - means[:, :, None]                                  # (k, d, n)
    mahalanobis = (np.matmul(np.linalg.inv(covariances), centred) * centred).sum(axis=1)
    return -0.5 * (d * _LOG_2PI + log_det[:, None] + mahalanobis) + np.log(weights)[:, None]


def _log_sum_exp(a: np.ndarray) -> np.ndarray:
    """log of the sum over components (axis 0) of exp(a), without overflow."""
    top = a.max(axis=0)
    return top + np.log(np.exp(a - top).sum(axis=0))


def fit_gaussian_mixture(x: np.ndarray, k: int, seed: int, *, reg_covar: float = 1e-6,
                         tol: float = 1e-3, max_iter: int = 100) -> MixtureFit:
    """EM fit of a ``k``-component full-covariance Gaussian mixture to ``x`` (n, d), k-means start."""
    x = np.asarray(x, np.float64)
    n, d = x.shape
    xt = np.ascontiguousarray(x.T)
    rng = np.random.default_rng(seed)
    labels = np.zeros(n, dtype=np.intp) if k == 1 else _kmeans_labels(x, k, rng)
    resp = np.zeros((k, n))
    resp[labels, np.arange(n)] = 1.0
    weights, means, covariances = _m_step(xt, resp, reg_covar)
    lower_bound = -np.inf
    converged = False
    n_iter = 0
    for n_iter in range(1, max_iter + 1):
        joint = _log_joint(xt, weights, means, covariances)
        norm = _log_sum_exp(joint)
        previous, lower_bound = lower_bound, float(norm.mean())
        weights, means, covariances = _m_step(xt, np.exp(joint - norm), reg_covar)
        if abs(lower_bound - previous) < tol:
            converged = True
            break
    log_likelihood = float(_log_sum_exp(_log_joint(xt, weights, means, covariances)).mean())
    n_parameters = k * d + k * d * (d + 1) / 2 + k - 1
    bic = -2.0 * log_likelihood * n + n_parameters * np.log(n)
    return MixtureFit(weights, means, covariances, log_likelihood, float(bic), converged, n_iter)


def fit_best_mixture(x: np.ndarray, max_components: int, seed: int) -> MixtureFit | None:
    """The fit of 1..``max_components`` components with the lowest BIC (the first on ties); None
    when ``max_components`` < 1."""
    best: MixtureFit | None = None
    for k in range(1, max_components + 1):
        fit = fit_gaussian_mixture(x, k, seed)
        if best is None or fit.bic < best.bic:
            best = fit
    return best


def ridgeline_ratio(weights: np.ndarray, means: np.ndarray, covariances: np.ndarray, steps: int = 201) -> float:
    """How deep the valley between two Gaussian components is: the ridgeline ratio of Hennig (2010,
    "Methods for merging Gaussian mixture components", Adv. Data Anal. Classif. 4:3-34).

    ``weights`` (2,), ``means`` (2, d), ``covariances`` (2, d, d): the two components, any units.
    Every mode and saddle of their mixture lies on the ridgeline (Ray & Lindsay 2005, Ann. Stat.
    33:2042) x(a) = [(1-a) S1^-1 + a S2^-1]^-1 [(1-a) S1^-1 m1 + a S2^-1 m2], a in [0, 1], which
    runs from one mean to the other; the mixture density is evaluated at ``steps`` equally spaced
    a. Returns the lowest density between the first and the last local maximum divided by the
    lower of those two maxima: 1.0 when the mixture has one mode (one population, the second
    component a shoulder or an edge of the first), towards 0 for two well separated peaks.
    """
    inverses = np.linalg.inv(covariances)
    a = np.linspace(0.0, 1.0, steps)[:, None]
    precision = (1.0 - a)[:, :, None] * inverses[0] + a[:, :, None] * inverses[1]            # (steps, d, d)
    pulled = (1.0 - a) * (inverses[0] @ means[0]) + a * (inverses[1] @ means[1])          # (steps, d)
    points = np.linalg.solve(precision, pulled[:, :, None])[:, :, 0]
    log_density = _log_sum_exp(_log_joint(np.ascontiguousarray(points.T), weights / weights.sum(), means, covariances))
    density = np.exp(log_density - log_density.max())
    rising = np.diff(density) > 0
    peaks = [i for i in range(steps) if (i == 0 or rising[i - 1]) and (i == steps - 1 or not rising[i])]
    first, last = peaks[0], peaks[-1]
    return float(density[first:last + 1].min() / min(density[first], density[last]))
