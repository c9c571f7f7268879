"""The codebook of a process run: what every output column means, its unit and how it was computed.

``codebook.csv`` (one row per column of ``phenotypes.csv``, ``populations.csv`` and ``qc.csv``:
``column, label, meaning, unit, method, table``) is written into every process output folder,
and the reports take their human-readable headers (``label``) from it.

Where an entry comes from, first match wins:
1. the study's ``codebook`` (study.yaml): curated text of its own columns (the TIL study's
   variables, the infused dose's label);
2. ``tilpheno/report/columns.csv`` (package data): the pipeline's own columns, any study;
3. the gating strategies: each ``variables`` entry (``100 × count(numerator) / count(denominator)``
   and how the numerator population is gated), each population's event count
   ``n_<population>_<tube>``, each marker's ``median_<marker>``;
4. the study's subset doses (``doses`` in study.yaml: cells = base × variable / 100).
A column none of these explains is listed with meaning ``not documented`` (a test keeps that empty).
"""
from __future__ import annotations

import re
from functools import lru_cache
from typing import Iterable, Mapping, Sequence

CODEBOOK_COLUMNS = ("column", "label", "meaning", "unit", "method", "table")
UNDOCUMENTED = "not documented"


@lru_cache(maxsize=1)
def _curated() -> dict[str, dict[str, str]]:
    import csv
    import io
    from importlib.resources import files

    text = files("tilpheno.report").joinpath("columns.csv").read_text(encoding="utf-8")
    return {row["column"]: row for row in csv.DictReader(io.StringIO(text))}


def _gating_method(population, fmo_percentile: float) -> str:
    """How a population is gated, in one line (from its strategy entry)."""
    if population.method == "boolean":
        gate = population.boolean
        joined = f" {'&' if gate.op == 'and' else '|'} ".join(
            ("not " if c else "") + o for o, c in zip(gate.operands, gate.complements or (False,) * len(gate.operands)))
        return f"{population.name} = {joined if gate.op != 'not' else 'not ' + gate.operands[0]}"
    dims = "/".join(population.dims)
    if population.method == "fmo":
        pct = population.params.get("percentile", fmo_percentile)
        control = "unstained control" if population.params.get("control") == "unstained" else f"{dims} FMO"
        return f"{population.name}: {dims} above the {pct:g}th percentile of the {control}'s {population.parent} events"
    return f"{population.name}: {population.method} gate on {dims} within {_readable(population.parent)}"


def _readable(name: str) -> str:
    """A population or column name for a reader: underscores as spaces; the strategies' top
    population (``root``, every event of the file) as "all events"."""
    from tilpheno.gates.strategy import ROOT

    return "all events" if name == ROOT else name.replace("_", " ")


def _from_strategies(strategies: Sequence, fmo_percentile: float) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    for st in strategies:
        pops = {p.name: p for p in st.populations}
        for v in st.variables:
            num = pops.get(v.numerator)
            method = f"100 × count({v.numerator}) / count({v.denominator}), stained {st.tube} tube"
            if num is not None:
                method += "; " + _gating_method(num, fmo_percentile)
            out[v.name] = {"label": f"{v.numerator} % {_readable(v.denominator)}",
                           "meaning": f"{v.numerator} as % of {_readable(v.denominator)} ({st.tube} tube)",
                           "unit": f"% of {_readable(v.denominator)}", "method": method}
        for p in st.populations:
            out[st.count_column(p.name)] = {
                "label": f"n {p.name} ({st.tube})", "meaning": f"Events in {p.name}, stained {st.tube} tube",
                "unit": "events", "method": _gating_method(p, fmo_percentile)}
        out[f"n_events_{st.tube}"] = {"label": f"n events ({st.tube})", "meaning": f"Events in the stained {st.tube} file",
                                      "unit": "events", "method": "$TOT (events decoded)"}
        for m in st.markers:
            out[f"median_{m}"] = {"label": f"median {m}", "meaning": f"Median {m} intensity of the population's events",
                                  "unit": "compensated linear units", "method": "median of the compensated, transformed values (the middle one; for an even count the mean of the two middle ones), mapped back to linear units: the linear median for an odd count"}
    return out


def _dose_entry(column: str, entries: Mapping[str, Mapping[str, str]], study=None) -> dict[str, str] | None:
    from tilpheno.study import default_study

    doses = {d.name: (d.base, d.variable) for d in (study or default_study()).doses}
    if column not in doses:
        return None
    base, variable = doses[column]
    var_label = entries.get(variable, {}).get("label", variable)
    base_text = entries.get("til_dose_cells", {}).get("label", "infused cells") if base == "dose" else \
        entries.get(base, {}).get("label", base)
    return {"label": f"{var_label.split(' %')[0]} dose", "meaning": f"Infused {var_label.split(' %')[0]} cells",
            "unit": "cells", "method": f"{base_text} × {variable} / 100 (NaN without the infused cell number)"}


def _entries(strategies: Sequence, fmo_percentile: float, study=None) -> dict[str, Mapping[str, str]]:
    """Every known entry, the study's curated text over the pipeline's over the strategies' (module
    docstring); ``study``: default the bundled study."""
    from tilpheno.study import default_study

    study = study or default_study()
    derived = _from_strategies(strategies, fmo_percentile)
    return {**_optional_said(derived, strategies, study.optional_tubes), **_curated(), **study.codebook}


def _optional_said(entries: Mapping[str, Mapping[str, str]], strategies: Sequence,
                   optional: frozenset[str]) -> dict[str, Mapping[str, str]]:
    """``entries`` with the meaning of each variable and count column of an optional tube kind
    (``Study.optional_tubes``) saying that a product without that tube has it blank."""
    if not optional:
        return dict(entries)
    own = {c: str(st.tube) for st in strategies if str(st.tube) in optional
           for c in (*(v.name for v in st.variables), *st.count_columns())}
    return {c: ({**e, "meaning": f"{e['meaning']}; blank for a product with no {own[c]} tube (optional in the study)"}
                if c in own else e) for c, e in entries.items()}


_COUNT = re.compile(r"^n_(.+)_([A-Za-z0-9]+)$")


def entry(column: str, entries: Mapping[str, Mapping[str, str]], study=None) -> dict[str, str]:
    """The codebook row of ``column`` (without ``table``); ``study``: its doses (default the bundled study)."""
    found = entries.get(column) or _dose_entry(column, entries, study)
    if found is None:
        match = _COUNT.match(column)
        what = f"events in {match.group(1)} ({match.group(2)} tube)" if match else UNDOCUMENTED
        found = {"label": _readable(column), "meaning": what if match else UNDOCUMENTED,
                 "unit": "events" if match else "", "method": ""}
    return {"column": column, **{k: str(found.get(k, "") or "") for k in ("label", "meaning", "unit", "method")}}


def build_codebook(tables: Mapping[str, Iterable[str]], strategies: Sequence = (), fmo_percentile: float = 99.5,
                   study=None):
    """DataFrame ``column, label, meaning, unit, method, table``: one row per distinct column of the
    given tables (``{"phenotypes.csv": columns, ...}``), in table then column order; ``table``
    lists every table the column appears in."""
    import pandas as pd

    entries = _entries(strategies, fmo_percentile, study)
    rows: dict[str, dict[str, str]] = {}
    for table, columns in tables.items():
        for c in columns:
            c = str(c)
            if c in rows:
                rows[c]["table"] += f" {table}"
            else:
                rows[c] = {**entry(c, entries, study), "table": table}
    return pd.DataFrame(list(rows.values()), columns=list(CODEBOOK_COLUMNS))


def labels(columns: Iterable[str], strategies: Sequence = (), study=None) -> dict[str, str]:
    """Human-readable header of each column (the codebook's ``label``)."""
    entries = _entries(strategies, 99.5, study)
    return {str(c): entry(str(c), entries, study)["label"] for c in columns}
