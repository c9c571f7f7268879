"""Join the phenotype table (one row per product) with the outcomes table (one row per patient).

The join is on ``product_id``. Nothing is dropped silently: products without outcomes and
patients whose product has no phenotype row are listed in :class:`Cohort` (and in the report
and ``unmatched.csv``). Patients with outcomes but no phenotypes still count in the response
rates and whole-cohort survival; marker analyses use patients with both. A marker value that
is missing (e.g. a product that failed QC) removes that patient from that marker's analyses
only, and the ``n`` of every result says how many were used. A blank outcome is missing, complete
cases per analysis: a patient without a PFS time or event is left out of the PFS analyses and kept in
the OS ones (:func:`endpoint_cohort`), one without a best response out of the response analyses;
each is named with its row in the file (:func:`missing_outcome_note`) and listed in ``unmatched.csv``.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd

from tilpheno.errors import TableError, did_you_mean
from tilpheno.io.files import path_problem
from tilpheno.io.outcomes import FILE_ROWS, MISSING_WORDS, usable_column
from tilpheno.study import Study, default_study

from .plausibility import patient_ids, plausibility_warnings

DEFAULT_COVARIATES = ("age", "sex", "ecog")
ENDPOINTS = {"pfs": ("pfs_months", "pfs_event"), "os": ("os_months", "os_event")}
RESPONSE_ANALYSES = ("the response rates (ORR, DCR), the responders table and the responders' survival (landmark, "
                     "time-dependent Cox)")


@dataclass
class Cohort:
    """Outcomes of all patients, the analysis set with markers, and what did not match."""

    outcomes: pd.DataFrame
    data: pd.DataFrame
    markers: list[str]
    covariates: list[str]
    products_without_outcomes: list[str]
    patients_without_products: list[str]
    notes: list[str] = field(default_factory=list)
    patients_with_products_not_done: list[str] = field(default_factory=list)   # their product failed in `process`

    def unmatched(self) -> pd.DataFrame:
        """One row per unmatched or left-out id: kind, id (``missing_pfs``: a patient without a PFS time or event,
        ``missing_best_response``: without a best response)."""
        rows = [("product_without_outcomes", p) for p in self.products_without_outcomes]
        rows += [("patient_without_product", p) for p in self.patients_without_products]
        rows += [("patient_product_not_done", p) for p in self.patients_with_products_not_done]
        for name, columns in [*ENDPOINTS.items(), ("best_response", ("best_response",))]:
            missing = self.outcomes[list(columns)].isna().any(axis=1)
            rows += [(f"missing_{name}", p) for p in self.outcomes.loc[missing, "patient_id"]]
        return pd.DataFrame(rows, columns=["kind", "id"])


def endpoint_cohort(cohort: Cohort, endpoint: str) -> Cohort:
    """``cohort`` with only the patients who have ``endpoint``'s time and event (complete cases per endpoint: a
    patient without a PFS time is left out of the PFS analyses, kept in the OS ones), events as 0/1 integers."""
    tcol, ecol = ENDPOINTS[endpoint]

    def known(frame: pd.DataFrame) -> pd.DataFrame:
        return frame[frame[tcol].notna() & frame[ecol].notna()].astype({ecol: int}).reset_index(drop=True)

    return replace(cohort, outcomes=known(cohort.outcomes), data=known(cohort.data))


def missing_outcome_note(outcomes: pd.DataFrame, columns: tuple[str, ...], analyses: str, kept: str) -> list[str]:
    """The one note naming each patient of ``outcomes`` (every patient with outcomes, as read) with a blank cell in
    ``columns``, the columns and the patient's row in the file (``attrs["file_rows"]`` of the reader; in a table
    built by hand, as in a CSV of it: header row 1), left out of ``analyses`` and ``kept`` in the others; []
    when none is blank."""
    blank = outcomes[list(columns)].isna()
    rows = outcomes.attrs.get(FILE_ROWS)
    if rows is None or len(rows) != len(outcomes):
        rows = range(2, len(outcomes) + 2)
    named = [f"missing {', '.join(c for c in columns if blank.at[i, c])} for patient {pid} (row {row})"
             for i, pid, row in zip(outcomes.index, outcomes["patient_id"], rows) if blank.loc[i].any()]
    if not named:
        return []
    more = f"; and {len(named) - 10} more (unmatched.csv lists them)" if len(named) > 10 else ""
    return [f"{'; '.join(named[:10])}{more}: left out of {analyses} (complete cases), kept in {kept}"]


def validate_phenotypes(phenotypes: pd.DataFrame, source: str = "phenotypes") -> pd.DataFrame:
    """Require a unique, non-empty ``product_id``; return a copy with ids as stripped text."""
    if "product_id" not in phenotypes.columns:
        raise TableError(f"{source}: row 1, column 'product_id': missing required column")
    frame = phenotypes.copy()
    ids = frame["product_id"].map(lambda v: "" if pd.isna(v) else str(v).strip())
    for i, value in enumerate(ids):
        if value == "":
            raise TableError(f"{source}: row {i + 2}, column 'product_id': missing id")
    dup = ids[ids.duplicated()]
    if not dup.empty:
        i = int(np.flatnonzero(ids.to_numpy() == dup.iloc[0])[1])
        raise TableError(f"{source}: row {i + 2}, column 'product_id': duplicate id '{dup.iloc[0]}'")
    frame["product_id"] = ids
    return frame


def read_phenotypes(path) -> pd.DataFrame:
    """Read ``phenotypes.csv`` (or ``.parquet``) of ``tilpheno process``, also as a spreadsheet saves
    it again: semicolon-separated with decimal commas (European Excel) or tab-separated (the
    separator read from the header line, :func:`tilpheno.io.files.column_separator`); TableError
    when unreadable."""
    from pathlib import Path

    path = Path(path)
    if not path.is_file():
        raise TableError(path_problem(path))
    if path.stat().st_size == 0:
        raise TableError(f"{path}: the file is empty")
    try:
        if path.suffix.lower() == ".parquet":
            frame = pd.read_parquet(path)
        else:
            data = path.read_bytes()
            if b"\x00" in data[:65536]:
                raise TableError(f"{path}: not a CSV file")
            from tilpheno.io.csvcells import restore_frame
            from tilpheno.io.files import column_separator

            # saved again by a European Excel: semicolons, decimal commas (as the outcomes table may be)
            sep = column_separator(data.decode("utf-8-sig", errors="replace").split("\n", 1)[0])
            frame = restore_frame(pd.read_csv(path, dtype={"product_id": str}, sep=sep,   # formula-neutralised cells
                                              decimal="," if sep == ";" else "."))
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError, ValueError) as exc:
        raise TableError(f"{path}: not a readable table ({type(exc).__name__})") from None
    return validate_phenotypes(frame, str(path))


def require_frames(phenotypes, outcomes) -> None:
    """TypeError naming the argument when ``phenotypes`` or ``outcomes`` is not a pandas DataFrame (a file's
    path, say), and the reader that makes one of a file."""
    readers = {"phenotypes": (phenotypes, "tilpheno.biomarkers.read_phenotypes(path)"),
               "outcomes": (outcomes, "tilpheno.io.outcomes.read_outcomes(path)")}
    for name, (value, reader) in readers.items():
        if not isinstance(value, pd.DataFrame):
            raise TypeError(f"{name}: expected a pandas DataFrame, got {type(value).__name__} {str(value)[:80]!r}; "
                            f"read a file with {reader}")


def _numeric_column(frame: pd.DataFrame, column: str, source: str) -> pd.Series:
    """Numbers; blank/NA missing; text or an infinite value is an error naming the row and column.

    ``frame``'s index is the 0-based position in the file (row = index + 2, header = row 1)."""
    raw = frame[column]
    text = raw.astype(str).str.strip()
    missing = raw.isna() | (text == "") | text.str.lower().isin(MISSING_WORDS)
    values = pd.to_numeric(raw.where(~missing), errors="coerce")
    bad = values.isna() & ~missing
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise TableError(f"{source}: row {int(frame.index[i]) + 2}, column '{column}': '{raw.iloc[i]}' is not a number")
    inf = np.isinf(values.to_numpy(dtype=float))
    if inf.any():
        i = int(np.flatnonzero(inf)[0])
        raise TableError(f"{source}: row {int(frame.index[i]) + 2}, column '{column}': '{raw.iloc[i]}' is not a "
                         "finite number")
    return values.astype(float)


def blank_markers_note(data: pd.DataFrame, markers: list[str]) -> list[str]:
    """The one note naming, per marker, the patients analysed (``data``) whose value is blank: each
    marker's analyses leave them out (never a 0), e.g. a percentage left blank because it rests on an
    undetermined gate (qc.csv code ``undetermined``: one population, no FMO or unstained control) or
    a failed tube; [] when every marker has every value."""
    blank = {m: data[m].isna() for m in markers if data[m].isna().any()}
    if not blank:
        return []
    counts = "; ".join(f"{m} {int(b.sum())} ({patient_ids(data, b)})" for m, b in blank.items())
    return [f"marker value(s) blank for some of the {len(data)} patients analysed, left out of that marker's analyses "
            f"(never counted as 0; qc.csv says why: e.g. an undetermined gate or a failed tube): {counts}"]


def population(column: str) -> str:
    """The population a variable counts (``cd8pd1`` of ``cd8pd1_pct_of_cd8`` and ``cd8pd1_dose_cells``),
    else the whole name."""
    return re.split(r"_pct_of_|_dose_cells$", column, maxsplit=1)[0]


def missing_markers_note(skipped: list[str], columns: list[str], study: Study) -> str:
    """The note naming the ``study``'s default markers missing from both tables (``columns``), each with the
    columns the tables have for its population (:func:`population`: the same subset of another parent, or as a
    dose), and how to choose the markers. No "did you mean": the closest names are other variables."""
    def have(marker: str) -> str:
        same = [c for c in dict.fromkeys(columns) if population(c) == population(marker)]
        return (f"the tables have {', '.join(same)} for {population(marker)}" if same
                else f"no column for {population(marker)}")
    return (f"default marker(s) of study '{study.name}' missing from both tables (phenotypes and outcomes), not "
            f"analysed: {'; '.join(f'{m} ({have(m)})' for m in skipped)}; --markers names the columns to analyse, "
            f"or the study's `biomarkers` list ({study.source}) sets the defaults")


def missing_covariates_note(data: pd.DataFrame, covariates: list[str]) -> list[str]:
    """The one note naming the patients analysed (``data``) who miss a covariate: the multivariable models, their
    bootstrap validation and calibration leave them out (complete cases, as R's ``na.action = na.omit``), so
    those models have fewer patients and events than the univariable ones; [] when none miss one."""
    missing = data[covariates].isna()
    rows = missing.any(axis=1)
    if not rows.any():
        return []
    counts = ", ".join(f"{c} ({int(missing[c].sum())})" for c in covariates if missing[c].any())
    return [f"covariate(s) missing for {int(rows.sum())} of {len(data)} patients analysed, {counts}: left out of the "
            f"multivariable models, their validation and calibration (complete cases): {patient_ids(data, rows)}"]


def _typed(frame: pd.DataFrame, columns, source: str, rows=None) -> tuple[pd.DataFrame, list[str]]:
    """A copy of ``frame`` (either table) whose ``columns`` (those present) are typed as the outcomes reader
    types a covariate (:func:`tilpheno.io.outcomes.usable_column`: refused, naming ``source``, the row of
    ``rows`` and the column, when they cannot be one), and the names of those that were text holding only
    numbers (a table built by hand with ``'1'``, ``'2'``): numbers now, as when read from a file."""
    typed = frame.copy()
    as_numbers = []
    for column in dict.fromkeys(c for c in columns if c in frame.columns):
        typed[column] = usable_column(frame, column, source, rows)
        if (pd.api.types.is_numeric_dtype(typed[column]) and not pd.api.types.is_numeric_dtype(frame[column])
                and frame[column].notna().any()):
            as_numbers.append(column)
    return typed, as_numbers


def build_cohort(phenotypes: pd.DataFrame, outcomes: pd.DataFrame, markers=None, covariates=None,
                 study: Study | None = None, sources: tuple[str, str] = ("phenotypes", "outcomes")) -> Cohort:
    """Join on product_id; choose markers (default: the study's ``biomarkers`` present) and covariates.

    ``outcomes`` is a validated outcomes table (:func:`tilpheno.io.outcomes.read_outcomes`); either
    table not a DataFrame (a path) is a TypeError naming it (:func:`require_frames`).
    A marker or covariate asked for by name must exist (TableError otherwise); default markers
    absent from the tables are skipped with a note naming what the tables have for them
    (:func:`missing_markers_note`), and so are default covariates absent from the
    outcomes (with "did you mean": a misspelt header). A column cannot be both a marker and a
    covariate (a model cannot adjust a marker for itself): named in both, it is a TableError; a
    default covariate that is also a marker, or that has one value in every patient analysed (an
    all-male cohort), is not used as a covariate (with a note); a named one with one value is a
    TableError. A covariate (default or named; or named from the phenotypes) or a marker from the outcomes
    that the reader could not type (numbers mixed with text: :func:`tilpheno.io.outcomes.usable_column`; in a table built by
    hand, or whose ``attrs`` were dropped, checked as the reader checks it) is a TableError naming its cell;
    such a column unused stops nothing. In a table built by hand, such a column of text holding only numbers
    (``'1'``, ``'2'``) is analysed as numbers, as the reader reads it from a file (with a note). ``sources``:
    how errors name the two tables (their files, when read from files).
    """
    require_frames(phenotypes, outcomes)
    phen_source, out_source = sources
    pheno = validate_phenotypes(phenotypes, phen_source).reset_index(drop=True)
    notes: list[str] = []
    not_done: list[str] = []
    if "status" in pheno.columns:   # `tilpheno process`: a failed product's variables are not results
        not_done = pheno.loc[pheno["status"].astype(str) != "done", "product_id"].tolist()
        if not_done:
            more = f" and {len(not_done) - 10} more" if len(not_done) > 10 else ""
            notes.append(f"{len(not_done)} product(s) not analysed, status not 'done': {', '.join(not_done[:10])}{more}")
            pheno = pheno[pheno["status"].astype(str) == "done"]   # index kept: the file's rows in messages
    overlap = [c for c in pheno.columns if c != "product_id" and c in outcomes.columns]
    if overlap:
        notes.append(f"column(s) in both tables, outcomes' values used: {', '.join(overlap)}")
        pheno = pheno.drop(columns=overlap)
    if markers is None:
        study = study or default_study()
        chosen = [m for m in study.biomarkers if m in pheno.columns or m in outcomes.columns]
        skipped = [m for m in study.biomarkers if m not in chosen]
        if skipped:
            notes.append(missing_markers_note(skipped, [*pheno.columns, *outcomes.columns], study))
    else:
        chosen = list(markers)
    outcomes, as_numbers = _typed(
        outcomes, [*(m for m in chosen if m not in pheno.columns), *(DEFAULT_COVARIATES if covariates is None
                                                                    else covariates)], out_source)
    pheno, pheno_numbers = _typed(pheno, [c for c in covariates or () if c not in chosen], phen_source,
                                  pheno.index + 2)   # a covariate from the phenotypes, checked alike
    if as_numbers + pheno_numbers:
        notes.append(f"column(s) of text holding only numbers analysed as numbers, as when read from a file: "
                     f"{', '.join(as_numbers + pheno_numbers)} (for categories, write them as words)")
    for m in chosen:
        if m in pheno.columns:
            pheno[m] = _numeric_column(pheno, m, phen_source)
        elif m in outcomes.columns:
            if not pd.api.types.is_numeric_dtype(outcomes[m]):
                raise TableError(f"{out_source}: column '{m}': marker is not numeric")
        else:
            hint = did_you_mean(m, [*pheno.columns, *outcomes.columns])
            raise TableError(f"{phen_source}, {out_source}: column '{m}': marker not found in either table{hint}")
    empty_markers = [m for m in chosen if (pheno[m] if m in pheno.columns else outcomes[m]).isna().all()]
    if empty_markers:
        notes.append(f"marker(s) with no values (e.g. every tube of that kind failed), skipped: "
                     f"{', '.join(empty_markers)}")
        chosen = [m for m in chosen if m not in empty_markers]
    product_ids = set(pheno["product_id"])
    with_outcomes = set(outcomes["product_id"])
    products_without = sorted(product_ids - with_outcomes)
    unmatched_patients = outcomes[~outcomes["product_id"].isin(product_ids)]
    failed = unmatched_patients["product_id"].isin(set(not_done))
    patients_without = sorted(unmatched_patients.loc[~failed, "patient_id"])
    patients_not_done = sorted(unmatched_patients.loc[failed, "patient_id"])
    unmatched_ids = sorted(with_outcomes - product_ids)
    folded = {p.casefold(): p for p in products_without}   # ids are compared as written, case included
    for pid in unmatched_ids[:20]:
        hint = (f" (did you mean '{folded[pid.casefold()]}'? ids differ in case)" if pid.casefold() in folded
                else did_you_mean(pid, products_without))
        if hint:
            notes.append(f"outcomes product_id '{pid}' matches no phenotyped product{hint}")
    data = outcomes.merge(pheno, on="product_id", how="inner", validate="one_to_one")
    data = data.sort_values("patient_id", kind="stable").reset_index(drop=True)
    if covariates is None:
        absent = [c for c in DEFAULT_COVARIATES if c not in outcomes.columns]
        if absent:   # a misspelt header ('ecgo', 'Age') would leave the adjustment out unsaid
            notes.append("default covariate(s) not in the outcomes, not adjusted for: "
                         f"{', '.join(c + did_you_mean(c, outcomes.columns) for c in absent)}; "
                         "--covariates names the columns to adjust for")
        cov = [c for c in DEFAULT_COVARIATES if c in outcomes.columns and outcomes[c].notna().any()]
        empty = [c for c in DEFAULT_COVARIATES if c in outcomes.columns and c not in cov]
        if empty:
            notes.append(f"default covariate(s) with no values, not used: {', '.join(empty)}")
        single = [c for c in cov if data[c].nunique() == 1]
        if single:
            notes.append("default covariate(s) with one value in every patient analysed, not used (nothing to adjust "
                         f"for): {', '.join(f'{c} = {data[c].dropna().iloc[0]}' for c in single)}")
            cov = [c for c in cov if c not in single]
        both = [c for c in cov if c in chosen]
        if both:
            notes.append(f"default covariate(s) analysed as marker(s), not used as covariates: {', '.join(both)}")
            cov = [c for c in cov if c not in both]
    else:
        cov = list(covariates)
        for c in cov:
            if c in chosen:
                raise TableError(f"{out_source}: column '{c}': named both as a marker and as a covariate; a model "
                                 "cannot adjust a marker for itself")
            if c not in data.columns:
                raise TableError(f"{out_source}: column '{c}': covariate not found{did_you_mean(c, outcomes.columns)}")
            if data[c].isna().all():
                raise TableError(f"{out_source}: column '{c}': covariate has no values")
            if data[c].nunique() == 1:
                raise TableError(f"{out_source}: column '{c}': covariate has one value ({data[c].dropna().iloc[0]}) in "
                                 "every patient analysed; a model cannot adjust for it")
    notes += missing_outcome_note(outcomes, ("best_response",), RESPONSE_ANALYSES,
                                  "the survival and marker analyses")
    notes += blank_markers_note(data, chosen)
    notes += missing_covariates_note(data, cov)
    notes += plausibility_warnings(outcomes, data, chosen)
    return Cohort(outcomes=outcomes.copy(), data=data, markers=chosen, covariates=cov,
                  products_without_outcomes=products_without, patients_without_products=patients_without,
                  notes=notes, patients_with_products_not_done=patients_not_done)
