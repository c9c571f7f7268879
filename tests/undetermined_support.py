"""Shared by the tests of undetermined gates (``tests/test_undetermined.py``), of the review app on them
(``tests/test_review_browser.py``) and of drafted studies (``tests/test_scaffold.py``,
``tests/test_study_config.py``): a FACSAria file without FMO or unstained control, a lab's release
spec on its drafted study, and the variables qc.csv says were left blank."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
FILE = ROOT / "tests" / "data" / "fcs" / "flowio" / "100715.fcs"
RELEASE = """name: lab release
criteria:
  - {name: Events acquired, column: n_events_tube025, op: ">=", limit: 5000, unit: events}
  - {name: CD4 of T cells, column: cd4_pct_of_cd3, op: ">", limit: 10}
  - {name: CD4 T cells counted, column: n_cd4pos_tube025, op: ">=", limit: 100, unit: events}
"""


def blank_variables(qc: pd.DataFrame, product: str) -> set[str]:
    """The variables qc.csv's ``undetermined`` flags of ``product`` say were left blank (resting on a gate
    undetermined without an FMO or unstained control)."""
    said = qc.loc[(qc["product_id"].astype(str) == product) & (qc["code"] == "undetermined"), "message"]
    return {v for m in said for v in m.split(" left blank (NA)")[0].rsplit(": ", 1)[1].split(", ")}
