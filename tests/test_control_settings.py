"""A control's acquisition settings against its stained tube's (tilpheno.control_settings).

The controls are real files, or copies of them whose TEXT has one keyword's value replaced by
another of the same length (nothing else moves): the flag must give the value written and the
value the untouched stained file holds.
"""
from pathlib import Path

import pandas as pd

from control_support import edited_copy, raw_text
from tilpheno.control_settings import compare_settings, control_flags
from tilpheno.errors import FCSReadError
from tilpheno.gates.strategy import default_strategy_paths, load_strategy
from tilpheno.io.fcs import read_fcs_metadata
from tilpheno.panel import read_panel_file
from tilpheno.phenotype import analyze_product
from tilpheno.qc import needs_review

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "sample_fcs"
ATLAS = Path(__file__).parent / "data" / "realdata_flowatlas"
CORPUS = Path(__file__).parent / "data" / "fcs"
CODES = ("control_settings_differ", "control_instrument_differs", "control_date_differs")


def renamed_keyword_copy(source: Path, folder: Path, old: str, new: str) -> Path:
    """A copy of ``source`` in ``folder`` whose TEXT keyword ``old`` is named ``new`` (same length)."""
    assert len(old) == len(new)
    raw = source.read_bytes()
    assert raw.count(old.encode()) == 1, (source, old)
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / source.name
    out.write_bytes(raw.replace(old.encode(), new.encode()))
    return out


def control_qc(result):
    return [f for f in result.qc if f.code in CODES]


# -- the bundled sample: an FMO acquired at another voltage ------------------------------------------


def _surface(fmo_cd8: Path):
    rows = pd.DataFrame([
        {"file": str(SAMPLE / "TIL001_surface_stain.fcs"), "tube": "surface", "role": "stain", "fmo_marker": ""},
        {"file": str(fmo_cd8), "tube": "surface", "role": "fmo", "fmo_marker": "CD8"},
        {"file": str(SAMPLE / "TIL001_unstained.fcs"), "tube": "unstained", "role": "unstained", "fmo_marker": ""},
    ])
    strategies = [load_strategy(p) for p in default_strategy_paths()]
    return analyze_product("TIL001", rows, [s for s in strategies if s.tube == "surface"], plot_events=5000)


def test_an_fmo_at_another_voltage_needs_review_naming_both_values(tmp_path):
    stained = read_fcs_metadata(SAMPLE / "TIL001_surface_stain.fcs")
    n = 1 + list(stained.channels["pnn"]).index("APC-H7-A")          # CD8's detector in the stained tube
    assert stained.keywords[f"$P{n}V"] == "610"
    fmo = edited_copy(SAMPLE / "TIL001_surface_FMO_CD8.fcs", tmp_path, f"$P{n}V", "610", "650")

    flags = control_qc(_surface(fmo))

    assert [(f.file, f.code, f.severity) for f in flags] == [
        ("TIL001_surface_FMO_CD8.fcs", "control_settings_differ", "warning")]
    message = flags[0].message
    assert "TIL001_surface_FMO_CD8.fcs" in message and "TIL001_surface_stain.fcs" in message
    assert "APC-H7-A (CD8 APC-H7) voltage ($PnV) 650 in the control, 610 in the stained tube" in message
    assert needs_review(flags[0])


def test_the_sample_controls_acquired_alike_raise_nothing():
    assert control_qc(_surface(SAMPLE / "TIL001_surface_FMO_CD8.fcs")) == []


# -- real FlowAtlas files: the donor's unstained control ---------------------------------------------


STAINED = ATLAS / "fcs" / "412C_mLN_026.fcs"
CONTROL = ATLAS / "unstained" / "412C__412C_unst_022.cleaned.fcs"


def ranges(path: Path) -> dict[str, str]:
    """Detector ($PnN) -> its $PnR text."""
    kw = raw_text(path)
    return {kw[f"$P{n}N"]: kw[f"$P{n}R"] for n in range(1, int(kw["$PAR"]) + 1)}


def _atlas_pair(stained: Path, control: Path):
    rows = pd.DataFrame([{"file": str(stained), "tube": "tcell", "role": "stain", "fmo_marker": ""},
                         {"file": str(control), "tube": "tcell", "role": "unstained", "fmo_marker": ""}])
    panel = read_panel_file(ATLAS / "panel.csv")
    strategy = load_strategy(ROOT / "gating" / "flowatlas_tcell.yaml")
    return analyze_product("412C", rows, [strategy], panel_override=panel)


READ_BY_CD3_PANEL = {"FJComp-355 379_28-A", "FJComp-355 560_40-A", "FJComp-355 820_60-A",     # CD3, CD8, CD4
                     "FJComp-561 585_15-A", "FJComp-405 710_40-A", "FJComp-561 780_60-A"}     # FoxP3, PD1, CD127


def test_a_real_flowjo_exported_control_with_other_ranges_is_said_not_reviewed():
    """FlowAtlas donor 412C's unstained control (same instrument serial, same day, same
    experiment) carries $PnR 82897 or 26214 on 12 of its 18 detectors, where the stained file has
    262144 on all. Both files are FlowJo exports (FJ_FCS_VERSION), whose $PnR is FlowJo's (262144 /
    10**0.5, 262144 / 10: the tops of FlowJo's display scales), not the instrument's range: one info
    line lists all 12, nothing needs review (before: a warning on the 4 the CD3 panel reads)."""
    control, stained = ranges(CONTROL), ranges(STAINED)
    differ = {d for d in control if control[d] != stained[d]}
    ck, sk = raw_text(CONTROL), raw_text(STAINED)
    assert "FJ_FCS_VERSION" in ck and "FJ_FCS_VERSION" in sk
    assert (ck["$DATE"], ck["CYTNUM"], ck["EXPERIMENT NAME"]) == (sk["$DATE"], sk["CYTNUM"], sk["EXPERIMENT NAME"])
    assert len(differ) == 12 and len(differ & READ_BY_CD3_PANEL) == 4
    assert {control[d] for d in differ} == {str(int(262144 / 10 ** 0.5)), str(int(262144 / 10))}

    flags = [f for f in control_qc(_atlas_pair(STAINED, CONTROL)) if "$PnR" in f.message]

    assert [(f.file, f.code, f.severity) for f in flags] == [(CONTROL.name, "control_settings_differ", "info")]
    message = flags[0].message
    assert STAINED.name in message
    assert ("range ($PnR) not compared, control (FJ_FCS_VERSION) and stained tube (FJ_FCS_VERSION) written by FlowJo"
            in message)
    for detector in control:
        said = f"{detector} range ($PnR) {control[detector]} in the control, {stained[detector]} in the stained tube"
        assert (said in message) == (detector in differ), detector
    assert not needs_review(flags[0])


def voltages(path: Path) -> dict[str, str]:
    """Detector ($PnN) -> its $PnV text, the detectors that have one."""
    kw = raw_text(path)
    return {kw[f"$P{n}N"]: kw[f"$P{n}V"] for n in range(1, int(kw["$PAR"]) + 1) if f"$P{n}V" in kw}


def test_a_real_pair_without_voltages_says_once_they_were_not_compared():
    """FlowAtlas donor 412C's unstained control and stained file (FlowJo exports) record no
    voltage ($PnV) on any detector: nothing said so, a reviewer could take the voltages for
    compared and alike -> one info line on the control says they were not recorded, so not compared
    (no review)."""
    assert voltages(CONTROL) == voltages(STAINED) == {}

    flags = [f for f in control_qc(_atlas_pair(STAINED, CONTROL)) if "$PnV" in f.message]

    assert [(f.file, f.code, f.severity, f.message) for f in flags] == [
        (CONTROL.name, "control_settings_differ", "info",
         f"control {CONTROL.name} vs stained tube {STAINED.name}: detector voltages ($PnV) not compared, "
         "not recorded in the control nor in the stained tube")]
    assert not needs_review(flags[0])


def test_an_unstained_control_without_voltages_is_said_once_naming_each_stained_tube(tmp_path):
    """TIL001's unstained control with its $PnV keywords renamed (#PnV: same bytes otherwise),
    against the surface and treg stained files, which record theirs: one info line on the control
    naming both stained files, the control as the file without voltages; the untouched control says
    nothing."""
    source = SAMPLE / "TIL001_unstained.fcs"
    unstained = source
    for n in range(1, int(raw_text(source)["$PAR"]) + 1):
        if f"$P{n}V" in raw_text(unstained):
            unstained = renamed_keyword_copy(unstained, tmp_path / str(n), f"$P{n}V", f"#P{n}V")
    stained = ["TIL001_surface_stain.fcs", "TIL001_treg_stain.fcs"]
    assert voltages(unstained) == {} and voltages(source) and all(voltages(SAMPLE / name) for name in stained)

    def flags_with(control: Path):
        rows = pd.DataFrame([{"file": str(SAMPLE / name), "tube": name.split("_")[1], "role": "stain", "fmo_marker": ""}
                             for name in stained]
                            + [{"file": str(control), "tube": "unstained", "role": "unstained", "fmo_marker": ""}])
        strategies = [load_strategy(p) for p in default_strategy_paths()]
        return control_qc(analyze_product("TIL001", rows, strategies, plot_events=5000))

    flags = flags_with(unstained)

    assert [(f.file, f.code, f.severity, f.message) for f in flags] == [
        (unstained.name, "control_settings_differ", "info",
         f"control {unstained.name} vs stained tubes {', '.join(stained)}: detector voltages ($PnV) not compared, "
         "not recorded in the control")]
    assert flags_with(source) == []


def test_the_same_ranges_in_files_not_written_by_flowjo_need_review(tmp_path):
    """The same real pair with FlowJo's keyword renamed in both files (same bytes otherwise): the
    ranges are the files' own, so a range on a detector the gates read still needs review."""
    control, stained = (renamed_keyword_copy(p, tmp_path / d, "FJ_FCS_VERSION", "XX_FCS_VERSION")
                        for p, d in ((CONTROL, "u"), (STAINED, "s")))
    assert "FJ_FCS_VERSION" not in raw_text(control) and "FJ_FCS_VERSION" not in raw_text(stained)
    ranges_c, ranges_s = ranges(control), ranges(stained)
    differ = {d for d in ranges_c if ranges_c[d] != ranges_s[d]}

    flags = [f for f in control_qc(_atlas_pair(stained, control)) if "$PnV" not in f.message]   # no voltages: said

    assert [(f.code, f.severity) for f in flags] == [("control_settings_differ", "warning"),
                                                     ("control_settings_differ", "info")]
    warning, info = flags[0].message, flags[1].message
    for detector in ranges_c:
        said = f"{detector} range ($PnR) {ranges_c[detector]} in the control, {ranges_s[detector]} in the stained tube"
        assert (said in warning) == (detector in differ and detector in READ_BY_CD3_PANEL), detector
        assert (said in info) == (detector in differ and detector not in READ_BY_CD3_PANEL), detector
    assert needs_review(flags[0]) and not needs_review(flags[1])


def test_an_instrument_fmo_with_another_range_needs_review(tmp_path):
    """A FACSDiva-style FMO (no FlowJo keyword) whose CD8 detector's $PnR is 131072 against the
    stained tube's 262144: another range, review."""
    stained = read_fcs_metadata(SAMPLE / "TIL001_surface_stain.fcs")
    n = 1 + list(stained.channels["pnn"]).index("APC-H7-A")
    assert raw_text(SAMPLE / "TIL001_surface_stain.fcs")[f"$P{n}R"] == "262144"
    fmo = edited_copy(SAMPLE / "TIL001_surface_FMO_CD8.fcs", tmp_path, f"$P{n}R", "262144", "131072")
    assert "FJ_FCS_VERSION" not in raw_text(fmo)

    flags = control_qc(_surface(fmo))

    assert [(f.code, f.severity) for f in flags] == [("control_settings_differ", "warning")]
    assert "APC-H7-A (CD8 APC-H7) range ($PnR) 131072 in the control, 262144 in the stained tube" in flags[0].message


# -- instrument and day --------------------------------------------------------------------------------


def test_another_instrument_needs_review_and_another_day_is_said(tmp_path):
    fmo = edited_copy(SAMPLE / "TIL001_surface_FMO_CD8.fcs", tmp_path / "a", "$CYTSN", "H6470012", "H6470099")
    fmo = edited_copy(fmo, tmp_path / "b", "$DATE", "29-SEP-2016", "30-SEP-2016")
    stained = read_fcs_metadata(SAMPLE / "TIL001_surface_stain.fcs")

    comparison = compare_settings(read_fcs_metadata(fmo), stained, set(stained.channels["pnn"]))
    flags = control_flags("TIL001", fmo.name, [("TIL001_surface_stain.fcs", "surface", comparison)])

    assert comparison.used == comparison.other == ()
    assert [(f.code, f.severity) for f in flags] == [("control_instrument_differs", "warning"),
                                                     ("control_date_differs", "info")]
    assert "H6470099 in the control, H6470012 in the stained tube" in flags[0].message
    assert "$DATE 30-SEP-2016 in the control, 29-SEP-2016 in the stained tube" in flags[1].message
    assert "experiment 'TIL infusion product phenotyping'" in flags[1].message


def test_every_real_corpus_file_compares_without_error():
    """Every file of the corpus that the reader takes goes through the check: against itself
    nothing differs (an Attune's $PnV ``NA`` included), against another file it answers."""
    files = []
    for path in sorted(p for p in CORPUS.rglob("*") if p.is_file()):
        try:
            files.append(read_fcs_metadata(path))
        except FCSReadError:   # not an FCS file, or one the reader refuses: not this check's concern
            continue
    assert len(files) > 20
    for a, b in zip(files, files[1:] + files[:1]):
        itself = compare_settings(a, a, set(a.channels["pnn"]))
        assert (itself.used, itself.other, itself.instrument, itself.date) == ((), (), None, None), a.path
        control_flags("P", a.path.name, [(b.path.name, "tube", compare_settings(a, b, set(b.channels["pnn"])))])


def test_a_real_unstained_control_without_the_cd19_detector_checks_the_gates_it_can():
    """FlowAtlas donor 412C's unstained control has 18 detectors, not the CD19 one (FJComp-405
    585_15-A) the T+B panel's first gate, non-B (CD19-), reads: it was unusable for every gate
    (``unstained_unusable``). An unstained event carries no CD19 stain, so it is non-B: the
    positive gates on the markers it has (CD3, CD4, CD8, FoxP3) are checked on all its events, and
    one info line names CD19, its detector and non-B."""
    rows = pd.DataFrame([{"file": str(STAINED), "tube": "tcell", "role": "stain", "fmo_marker": ""},
                         {"file": str(CONTROL), "tube": "unstained", "role": "unstained", "fmo_marker": ""}])
    panel = read_panel_file(ATLAS / "panel.csv")
    strategy = load_strategy(ROOT / "gating" / "flowatlas_tcell_cd19.yaml")
    result = analyze_product("412C", rows, [strategy], panel_override=panel)
    kw = raw_text(CONTROL)
    has = {kw[f"$P{n}N"] for n in range(1, int(kw["$PAR"]) + 1)}
    detector = {r.marker: r.detector for r in panel.rows if r.tube in ("*", STAINED.stem)}
    cd19 = detector["CD19"]
    assert cd19 not in has and cd19 in ranges(STAINED)
    positive = {"T cells": "CD3", "CD4+": "CD4", "CD8+": "CD8", "FoxP3+": "FoxP3"}   # the strategy's x > cut gates
    assert all(detector[m] in has for m in positive.values())

    on_control = [f for f in result.qc if f.file == CONTROL.name and f.code.startswith("unstained")]
    assert [(f.code, f.severity) for f in on_control] == [("unstained_control", "info")] * 2
    listed, lacking = on_control[0].message, on_control[1].message
    checked = [part.split(" ")[0] if not part.startswith("T cells") else "T cells"
               for part in listed.split("cut: ")[1].split("; ")]
    assert checked == list(positive)
    assert all(f"of {kw['$TOT']} non-B events" in part for part in listed.split("cut: ")[1].split("; "))
    assert lacking == (f"the unstained control {CONTROL.name} has no detector for CD19 ({cd19}), which the "
                       f"{STAINED.name} gate(s) non-B read: an unstained event is taken as negative for it (below "
                       "their cut); positive gates not checked on the control: none")


# -- single-stain compensation controls ------------------------------------------------------------


def test_a_single_stain_control_acquired_with_another_range_needs_review(tmp_path):
    """The single-stain controls a product's matrix is estimated from were never compared with its
    stained tubes (an FMO or unstained control is): a PE control whose PE-A $PnR is 131072 against
    the stained tubes' 262144 gave a matrix without a word -> control_settings_differ (review) on
    the control, once per stained file, naming the detector and both values; the other controls,
    acquired alike, raise nothing."""
    from tilpheno.pipeline import process_folder
    from tilpheno.simulate.cohort import simulate_product, write_product
    from tilpheno.simulate.controls import simulate_controls

    folder = tmp_path / "in"
    write_product(simulate_product("TIL001", 21, 4000), folder)
    simulate_controls(tmp_path / "controls", 6, n_events=3000)
    pe = "Compensation Controls_PE Stained Control.fcs"
    kw = raw_text(tmp_path / "controls" / pe)
    n = next(i for i in range(1, int(kw["$PAR"]) + 1) if kw[f"$P{i}N"] == "PE-A")
    edited_copy(tmp_path / "controls" / pe, folder / "controls", f"$P{n}R", "262144", "131072")
    for other in (tmp_path / "controls").glob("*.fcs"):
        if other.name != pe:
            (folder / "controls" / other.name).write_bytes(other.read_bytes())
    stained = sorted(p.name for p in folder.glob("TIL001_*_stain.fcs"))
    assert len(stained) == 2 and all(ranges(folder / s)["PE-A"] == "262144" for s in stained)

    summary = process_folder(folder, tmp_path / "out")

    assert summary.ok
    qc = pd.read_csv(tmp_path / "out" / "qc.csv").fillna("")
    flags = qc[qc["code"].isin(CODES)]
    assert list(zip(flags["file"], flags["code"], flags["severity"])) == [(pe, "control_settings_differ", "warning")] * 2
    for name, message in zip(stained, sorted(flags["message"], key=lambda m: m.split(" vs stained tube ")[1])):
        assert message.startswith(f"control {pe} vs stained tube {name}: acquired with other settings on detectors "
                                  "of the spillover matrix: PE-A")
        assert "range ($PnR) 131072 in the control, 262144 in the stained tube" in message


def test_the_settings_compared_are_those_of_the_control_the_matrix_was_estimated_from(tmp_path, monkeypatch):
    """The PE control the matrix is estimated from has PE-A $PnR 131072 (262144 in the stained
    tubes); it is replaced by its untouched original after the estimate read it and before the
    product is processed. The check read the controls' TEXT again, so it compared the new file and
    said nothing, while the matrix (and run.json's digest) came from the 131072 one -> the settings
    compared are those the estimate read: control_settings_differ (review) on the control, once per
    stained file, as when nothing is replaced."""
    import tilpheno.spillover as spillover
    from tilpheno.pipeline import process_folder
    from tilpheno.simulate.cohort import simulate_product, write_product
    from tilpheno.simulate.controls import simulate_controls

    folder = tmp_path / "in"
    write_product(simulate_product("TIL001", 21, 4000), folder)
    simulate_controls(tmp_path / "controls", 6, n_events=3000)
    pe = "Compensation Controls_PE Stained Control.fcs"
    original = tmp_path / "controls" / pe
    kw = raw_text(original)
    n = next(i for i in range(1, int(kw["$PAR"]) + 1) if kw[f"$P{i}N"] == "PE-A")
    edited = edited_copy(original, folder / "controls", f"$P{n}R", "262144", "131072")
    for other in (tmp_path / "controls").glob("*.fcs"):
        if other.name != pe:
            (folder / "controls" / other.name).write_bytes(other.read_bytes())
    plan = spillover.plan_compensation

    def estimate_then_replace(*args, **kwargs):
        planned = plan(*args, **kwargs)
        edited.write_bytes(original.read_bytes())   # replaced after the estimate read it
        return planned

    monkeypatch.setattr(spillover, "plan_compensation", estimate_then_replace)
    summary = process_folder(folder, tmp_path / "out")

    assert summary.ok and ranges(edited)["PE-A"] == "262144"
    qc = pd.read_csv(tmp_path / "out" / "qc.csv").fillna("")
    flags = qc[qc["code"].isin(CODES)]
    assert list(zip(flags["file"], flags["code"], flags["severity"])) == [(pe, "control_settings_differ", "warning")] * 2
    assert all("range ($PnR) 131072 in the control, 262144 in the stained tube" in m for m in flags["message"])


def test_an_unstained_control_of_another_day_is_said_once_naming_each_stained_tube(tmp_path):
    """TIL001's unstained control serves the surface and the treg stained files: acquired another
    day it was said twice, once per stained file, and a control set of 7 compensation controls
    against 2 stained files 14 times -> one control_date_differs per control, naming every stained
    file with its $DATE."""
    unstained = edited_copy(SAMPLE / "TIL001_unstained.fcs", tmp_path, "$DATE", "29-SEP-2016", "30-SEP-2016")
    stained = ["TIL001_surface_stain.fcs", "TIL001_treg_stain.fcs"]
    days = {name: raw_text(SAMPLE / name)["$DATE"] for name in stained}
    assert set(days.values()) == {"29-SEP-2016"}
    rows = pd.DataFrame([{"file": str(SAMPLE / name), "tube": name.split("_")[1], "role": "stain", "fmo_marker": ""}
                         for name in stained]
                        + [{"file": str(unstained), "tube": "unstained", "role": "unstained", "fmo_marker": ""}])
    strategies = [load_strategy(p) for p in default_strategy_paths()]

    flags = control_qc(analyze_product("TIL001", rows, strategies, plot_events=5000))

    assert [(f.file, f.code, f.severity) for f in flags] == [(unstained.name, "control_date_differs", "info")]
    assert flags[0].message == (f"control {unstained.name} vs stained tubes {', '.join(stained)}: acquired on another "
                                "day ($DATE 30-SEP-2016 in the control, 29-SEP-2016 in the stained tubes) "
                                "(both of experiment 'TIL infusion product phenotyping')")


def test_the_object_model_compares_its_controls_settings_as_the_pipeline_does(tmp_path):
    """``gate_sample`` never compared a control's acquisition settings with the sample's: the CD8 FMO
    copy at 650 V (610 V in the stained tube: a review warning in the pipeline) and the real 412C
    control with other ranges on the gated detectors (info in the pipeline) raised nothing -> the same flags as
    ``analyze_product`` (file, code, severity, message)."""
    import tilpheno as tp

    n = 1 + list(read_fcs_metadata(SAMPLE / "TIL001_surface_stain.fcs").channels["pnn"]).index("APC-H7-A")   # CD8's
    fmo = edited_copy(SAMPLE / "TIL001_surface_FMO_CD8.fcs", tmp_path, f"$P{n}V", "610", "650")
    strategy = next(load_strategy(p) for p in default_strategy_paths() if load_strategy(p).tube == "surface")
    stained = tp.Sample.from_fcs(SAMPLE / "TIL001_surface_stain.fcs", strategy)
    controls = [tp.Sample.from_fcs(fmo, strategy, fmo="CD8", stained=stained),
                tp.Sample.from_fcs(SAMPLE / "TIL001_unstained.fcs", strategy, unstained=True, stained=stained)]
    cases = [(tp.gate_sample(strategy, stained, controls, product_id="TIL001"), _surface(fmo))]

    panel = read_panel_file(ATLAS / "panel.csv")
    atlas = load_strategy(ROOT / "gating" / "flowatlas_tcell.yaml")
    stained = tp.Sample.from_fcs(STAINED, atlas, panel=panel)
    control = tp.Sample.from_fcs(CONTROL, atlas, unstained=True, stained=stained, panel=panel)
    rows = pd.DataFrame([{"file": str(STAINED), "tube": "tcell", "role": "stain", "fmo_marker": ""},
                         {"file": str(CONTROL), "tube": "tcell", "role": "unstained", "fmo_marker": ""}])
    cases.append((tp.gate_sample(atlas, stained, [control], product_id="412C"),
                  analyze_product("412C", rows, [atlas], panel_override=panel)))
    for result, pipeline in cases:
        expected = [(f.file, f.code, f.severity, f.message) for f in control_qc(pipeline)]
        assert expected   # the FMO at 650 V: a review warning; 412C: its ranges said (info: a FlowJo export)
        assert [(f.file, f.code, f.severity, f.message) for f in result.flags if f.code in CODES] == expected
    assert [f.severity for f in control_qc(cases[0][1]) if f.code == "control_settings_differ"] == ["warning"]
