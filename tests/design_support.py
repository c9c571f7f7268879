"""Small FCS files in the demo instrument layout (docs/design.md), shared by the panel, manifest, outcome
and scaffold tests."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from malformed_fcs import float_file
from tilpheno.panel import normalize_marker

# docs/design.md, "Demo instrument layout": $PnN -> ($PnS surface tube, $PnS Treg tube)
LAYOUT = {
    "FSC-A": ("", ""), "FSC-H": ("", ""), "SSC-A": ("", ""), "SSC-H": ("", ""),
    "FITC-A": ("CD3 FITC", "CD3 FITC"), "PE-A": ("PD1 PE", "FoxP3 PE"), "PerCP-Cy5-5-A": ("7AAD", ""),
    "APC-A": ("CD56 APC", ""), "BV421-A": ("CD4 BV421", "CD4 BV421"), "APC-H7-A": ("CD8 APC-H7", ""), "Time": ("", ""),
}


def design_file(folder: Path, name: str, tube: str, omit: str | None = None, keywords=None) -> Path:
    """A small file with the design layout; ``omit`` drops that marker's $PnS (an FMO tube)."""
    names = tuple(LAYOUT)
    extra = dict(keywords or {})
    for n, pnn in enumerate(names, 1):
        pns = LAYOUT[pnn][0 if tube == "surface" else 1]
        if pns and normalize_marker(pns) != omit:
            extra[f"$P{n}S"] = pns
    events = np.ones((3, len(names)))
    path = folder / name
    path.write_bytes(float_file(events, channels=names, extra=extra))
    return path
