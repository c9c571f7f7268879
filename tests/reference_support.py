"""What the tests against R's numbers share: the folder of R's outputs and the small edge-case data sets
``tests/reference/make_reference.R`` ran R on (its ``edge`` list, restated here once: time in months,
event 1/0), for ``tests/test_biomarkers_reference.py`` and ``tests/test_biomarkers_r_extra.py``."""
from __future__ import annotations

from pathlib import Path

REF = Path(__file__).parent / "reference"
EDGE = {
    "flat_half": ([1, 2, 3, 4], [1, 1, 1, 1]),
    "ends_at_half": ([1, 2, 3, 4], [1, 1, 0, 0]),
    "ties_censored": ([1, 2, 2, 3, 4, 5, 5, 6], [1, 1, 0, 1, 0, 1, 1, 0]),
    "never_half": ([1, 2, 3, 4, 5], [1, 0, 0, 0, 0]),
}
