"""Reports drawn on demand (``pipeline.draw_report``, the review app's report page): the bytes a
``--reports now`` run publishes, drawn from a run that deferred its reports, with nothing written."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from tilpheno.errors import TilphenoError
from tilpheno.pipeline import draw_report, process_folder, report_path

SAMPLE = Path(__file__).resolve().parents[1] / "sample_fcs"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """TIL002 processed twice from the same manifest: reports drawn at once, and deferred."""
    tmp = tmp_path_factory.mktemp("draw")
    manifest = pd.read_csv(SAMPLE / "manifest.csv", dtype=str, keep_default_na=False)
    one = manifest[manifest["product_id"] == "TIL002"].copy()
    one["file"] = [str(SAMPLE / f) for f in one["file"]]
    one.to_csv(tmp / "manifest.csv", index=False)
    common = dict(manifest_csv=tmp / "manifest.csv", outcomes_path=SAMPLE / "outcomes.csv", allow_unmatched=True)
    assert process_folder(SAMPLE, tmp / "now", reports="now", **common).ok
    assert process_folder(SAMPLE, tmp / "later", reports="later", **common).ok
    return tmp / "now", tmp / "later"


def test_a_deferred_report_drawn_on_demand_equals_the_one_drawn_at_once_and_writes_nothing(runs):
    now, later = runs
    assert not report_path(later, "TIL002").exists()
    before = {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in later.rglob("*")}
    html = draw_report(later, "TIL002")
    assert html == report_path(now, "TIL002").read_text(encoding="utf-8")
    assert {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in later.rglob("*")} == before


def test_a_report_of_no_product_of_the_run_is_one_line(runs):
    with pytest.raises(TilphenoError, match=r"no product 'TIL001' in this run"):
        draw_report(runs[1], "TIL001")


def test_a_run_record_without_its_inputs_list_is_named_old(runs, tmp_path):
    """A run.json of an older tilpheno (no ``inputs`` list) was refused as 'TIL002_...fcs: input
    file added since the run' (every file then looked new) -> one line naming run.json, the missing
    field, and what to do."""
    import json
    import shutil

    old = shutil.copytree(runs[1], tmp_path / "old")
    record = json.loads((old / "run.json").read_text(encoding="utf-8"))
    del record["inputs"]
    (old / "run.json").write_text(json.dumps(record), encoding="utf-8")
    with pytest.raises(TilphenoError) as caught:
        draw_report(old, "TIL002")
    message = str(caught.value)
    assert "\n" not in message and message.startswith(f"{old / 'run.json'}: field inputs")
    assert "older tilpheno" in message and "run `tilpheno process` again" in message
