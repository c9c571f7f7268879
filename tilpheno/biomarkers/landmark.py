"""Response and survival without guarantee-time bias.

Responders have to survive until they respond, so comparing responders with non-responders from
the start of therapy (the study's Fig. 5) favours responders even when response does not matter.
Two unbiased analyses (Anderson, Cain & Gelber 1983; Mantel & Byar 1974):

- **Landmark analysis** at a chosen time L (default 3 months, the study's first tumour
  assessment): patients whose endpoint occurred or who were censored at or before L are
  excluded; the others are classified by response by L (``response_months <= L``; without a
  response time, by best overall response, assuming responses were documented by L - stated in
  the result); survival is counted from L (Kaplan-Meier per group, log-rank, Cox HR).
- **Response as a time-dependent covariate**: Cox model on start-stop data, each patient
  non-responder from 0 to the response time and responder afterwards (lifelines
  ``CoxTimeVaryingFitter``, Efron ties; equal to R ``coxph(Surv(tstart, tstop, event) ~ responder)``
  on ``tmerge`` data). Needs the response time.

The naive comparison from time 0 is available only through :func:`naive_responder_comparison`,
whose result always carries the guarantee-time-bias warning.
"""
from __future__ import annotations

import warnings as _warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import stats

from .cox import fit_cox, no_estimate_reason
from .plausibility import patient_ids
from .survival import KaplanMeier, logrank_test

NAIVE_WARNING = ("naive responder comparison from the start of therapy: biased in favour of responders "
                 "(guarantee-time bias: a patient must survive until response to be a responder); use the "
                 "landmark or time-dependent analysis")


@dataclass
class LandmarkResult:
    """Landmark comparison of responders and non-responders."""

    endpoint: str
    landmark: float
    n: int
    events: int   # the endpoint's events after the landmark among the n patients
    n_excluded: int
    n_responders: int
    hr: float
    hr_ci_low: float
    hr_ci_high: float
    p_cox: float
    logrank_chisq: float
    logrank_p: float
    median_responders: float
    median_nonresponders: float
    notes: list[str] = field(default_factory=list)

    def row(self) -> dict:
        d = {k: v for k, v in self.__dict__.items() if k != "notes"}
        d["analysis"] = "landmark"
        d["warning"] = "; ".join(self.notes)
        return d


def excluded_note(event_before, landmark: float, named: str = "") -> str:
    """Who the landmark analysis leaves out and why (``event_before``: the events, 1/0, of the patients whose
    time is at or before the landmark, in months; ``named``: their ids, :func:`left_out_ids`)."""
    events = int(np.sum(event_before))
    censored = len(event_before) - events
    return (f"{len(event_before)} patient(s) excluded, their time at or before the {landmark:g}-month landmark: "
            f"{events} with the event, {censored} censored" + (f" ({named})" if named else ""))


def left_out_ids(ids, mask) -> str:
    """The ids (a patient's, in the order given) where ``mask`` holds, for a message (the first 5, then how many
    more); "" without ``ids``."""
    return "" if ids is None else patient_ids(pd.DataFrame({"patient_id": np.asarray(ids)}), np.asarray(mask))


def not_estimable(n_responders: int, n: int, events: int) -> str:
    """Why responders and non-responders followed past the landmark cannot be compared, else ""."""
    if n == 0:
        return "no patient followed past the landmark"
    if n_responders == 0:
        return f"no responder among the {n} patients followed past the landmark"
    if n_responders == n:
        return f"all {n} patients followed past the landmark are responders"
    if events == 0:
        return f"no events after the landmark among its {n} patients"
    return ""


def landmark_analysis(time, event, responded_by, landmark: float, endpoint: str = "",
                      assumption: str | None = None, conf_level: float = 0.95, ids=None) -> LandmarkResult:
    """Survival from ``landmark`` of patients still event-free and followed at ``landmark``.

    ``responded_by`` is True for patients who had responded by the landmark. A Cox model that
    cannot be fitted (a group without events after the landmark: infinite hazard ratio) leaves the
    hazard ratio blank with the reason in ``notes``; the log-rank test and medians are still given.
    ``ids`` (the patients' ids, as ``time``): the note on the patients excluded names them.
    """
    t = np.asarray(time, dtype=float)
    e = np.asarray(event, dtype=float)
    r = np.asarray(responded_by, dtype=bool)
    keep = t > landmark
    notes = [assumption] if assumption else []
    if not keep.all():
        notes.append(excluded_note(e[~keep], landmark, left_out_ids(ids, ~keep)))
    tt, ee, rr = t[keep] - landmark, e[keep], r[keep]
    n_resp = int(rr.sum())
    nan = float("nan")
    why = not_estimable(n_resp, rr.size, int(ee.sum()))
    if why:
        notes.append(f"landmark comparison not estimable: {why}")
        return LandmarkResult(endpoint, landmark, int(keep.sum()), int(ee.sum()), int((~keep).sum()), n_resp, nan,
                              nan, nan, nan,
                              nan, nan, nan, nan, notes)
    frame = pd.DataFrame({"t": tt, "e": ee, "responder": rr.astype(float)})
    try:
        fit = fit_cox(frame, "t", "e", ["responder"], conf_level, start="zero")
        c = fit.coefficients.iloc[0]
        notes += fit.warnings
    except (ValueError, np.linalg.LinAlgError) as exc:   # e.g. every event after the landmark in one group
        c = pd.Series({"hr": nan, "hr_ci_low": nan, "hr_ci_high": nan, "p": nan})
        notes.append(f"landmark Cox model not fitted ({exc}); log-rank test and medians given")
    lr = logrank_test(tt, ee, rr.astype(int))
    med = {g: KaplanMeier().fit(tt[rr == g], ee[rr == g]).median().estimate for g in (True, False)}
    return LandmarkResult(endpoint, landmark, int(keep.sum()), int(ee.sum()), int((~keep).sum()), n_resp, float(c.hr),
                          float(c.hr_ci_low), float(c.hr_ci_high), float(c.p), lr.chisq, lr.p,
                          med[True] + landmark if np.isfinite(med[True]) else nan,
                          med[False] + landmark if np.isfinite(med[False]) else nan, notes)


def start_stop(time, event, response_time, covariates: pd.DataFrame | None = None) -> pd.DataFrame:
    """Counting-process rows (id, start, stop, event, responder, covariates) as R ``tmerge(..., tdc())``."""
    t = np.asarray(time, dtype=float)
    e = np.asarray(event, dtype=float)
    rt = np.asarray(response_time, dtype=float)
    rows = []
    for i in range(t.size):
        if np.isfinite(rt[i]) and 0 < rt[i] < t[i]:
            rows += [(i, 0.0, rt[i], 0.0, 0.0), (i, rt[i], t[i], e[i], 1.0)]
        else:
            rows.append((i, 0.0, t[i], e[i], float(np.isfinite(rt[i]) and rt[i] <= 0)))
    out = pd.DataFrame(rows, columns=["id", "start", "stop", "event", "responder"])
    if covariates is not None:
        out = out.join(covariates.reset_index(drop=True), on="id")
    return out


def responders_in_model(time, response_time) -> int:
    """How many patients are responders at some time of their follow-up in :func:`start_stop`'s rows: a response
    time (months) blank, or at or past the patient's time, is none (as R ``tmerge`` drops it); a patient followed
    for no time (time 0, response at 0) is in no risk set, left out as :func:`time_dependent_cox` leaves it out."""
    rows = start_stop(time, np.zeros(np.asarray(time).size), response_time)
    rows = rows[rows.stop > rows.start]   # the zero-length row (0, 0]: not in the model
    return int(rows.groupby("id").responder.max().sum())


def time_dependent_cox(time, event, response_time, covariates: pd.DataFrame | None = None,
                       endpoint: str = "", conf_level: float = 0.95, ids=None) -> pd.DataFrame:
    """Cox model with response as a time-dependent covariate (lifelines CoxTimeVaryingFitter).

    Returns one row per coefficient: analysis, endpoint, variable, coef, se, hr, CI, p, n, events,
    loglik, warning (lifelines' warnings recorded, never silenced). A patient followed for no time (time 0) is in
    no risk set: the zero-length row is left out, as R ``coxph`` leaves it out ('Stop time must be > start time,
    NA created'; R ``tmerge`` refuses the time), and so is the patient from ``n`` (the patients in the model; R's
    ``n`` counts their start-stop rows) and its event from ``events`` (the model's events, R's ``nevent``), the
    warning saying how many were left out (and who, given ``ids``: the patients' ids, as ``time``).
    """
    from lifelines import CoxTimeVaryingFitter

    data = start_stop(time, event, response_time, covariates)
    data = data[data.stop > data.start]   # (0, 0] of a patient followed for no time: in no risk set; R coxph drops it
    n = int(data.id.nunique())
    left_out = int(np.asarray(time).size) - n
    named = left_out_ids(ids, ~np.isin(np.arange(np.asarray(time).size), data.id.unique()))
    excluded = [f"{left_out} patient(s) followed for no time (time 0) left out: in no risk set"
                + (f" ({named})" if named else "")] if left_out else []
    cols = ["responder", *([] if covariates is None else list(covariates.columns))]
    reason = no_estimate_reason(data.stop, data.event, data[cols], entry=data.start)
    if reason:   # lifelines would report a hazard ratio of 1e13 (monotone) or 1 (no information)
        return pd.DataFrame({"analysis": "time-dependent Cox", "endpoint": endpoint, "variable": cols, "coef": np.nan,
                             "se": np.nan, "hr": np.nan, "hr_ci_low": np.nan, "hr_ci_high": np.nan, "p": np.nan,
                             "n": n, "events": int(data.event.sum()), "loglik": np.nan,
                             "warning": "; ".join([f"not fitted: {reason}", *excluded])})
    ctv = CoxTimeVaryingFitter(alpha=1 - conf_level)
    with _warnings.catch_warnings(record=True) as caught:
        _warnings.simplefilter("always")
        ctv.fit(data[["id", "start", "stop", "event", *cols]], id_col="id", event_col="event", start_col="start",
                stop_col="stop", fit_options={"precision": 1e-12})
    notes = excluded + [f"lifelines {w.category.__name__}: {' '.join(str(w.message).split())[:300]}" for w in caught]
    z = stats.norm.ppf(1 - (1 - conf_level) / 2)
    coef, se = ctv.params_.to_numpy(float), ctv.standard_errors_.to_numpy(float)
    return pd.DataFrame({
        "analysis": "time-dependent Cox", "endpoint": endpoint, "variable": cols, "coef": coef, "se": se,
        "hr": np.exp(coef), "hr_ci_low": np.exp(coef - z * se), "hr_ci_high": np.exp(coef + z * se),
        "p": 2 * stats.norm.sf(np.abs(coef / se)), "n": n,
        "events": int(data.event.sum()), "loglik": float(ctv.log_likelihood_), "warning": "; ".join(notes)})


def naive_responder_comparison(time, event, responder) -> dict:
    """Responders vs non-responders from time 0 (biased; the result carries ``NAIVE_WARNING``)."""
    _warnings.warn(NAIVE_WARNING, stacklevel=2)
    lr = logrank_test(time, event, np.asarray(responder, dtype=int))
    return {"analysis": "naive (biased)", "logrank_chisq": lr.chisq, "logrank_p": lr.p, "warning": NAIVE_WARNING}
