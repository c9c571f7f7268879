"""Controls shared by the tests: copies of real FCS files with one TEXT keyword edited and that TEXT read
from the bytes (``tests/test_control_settings.py``, ``tests/test_cache.py``); a simulated product and
the control-based live/dead strategy (``tests/test_control_live_dead.py``, ``tests/test_fallback_overlay.py``)."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from tilpheno.gates.strategy import parse_strategy
from tilpheno.simulate.cohort import manifest_rows, simulate_product, write_product
from tilpheno.simulate.phenomena import Phenomena


def edited_copy(source: Path, folder: Path, keyword: str, old: str, new: str) -> Path:
    """A copy of ``source`` in ``folder`` (same name) whose TEXT keyword ``keyword`` reads ``new``
    instead of ``old`` (same length: no offset moves)."""
    assert len(old) == len(new)
    raw = source.read_bytes()
    text_start = int(raw[10:18])   # HEADER: TEXT's first byte is the delimiter
    delimiter = raw[text_start:text_start + 1]
    before = delimiter + keyword.encode() + delimiter + old.encode() + delimiter
    assert raw.count(before) == 1, (source, keyword)
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / source.name
    out.write_bytes(raw.replace(before, delimiter + keyword.encode() + delimiter + new.encode() + delimiter))
    return out


def raw_text(path: Path) -> dict[str, str]:
    """TEXT keywords read from the bytes here (no escaped delimiters in these files), not by tilpheno."""
    raw = path.read_bytes()
    start, stop = int(raw[10:18]), int(raw[18:26])
    parts = raw[start + 1:stop + 1].decode("latin-1").split(raw[start:start + 1].decode())
    return dict(zip(parts[0::2], parts[1::2]))


VIABILITY = """
strategy: viability
tube: surface
markers: [7AAD]
acquisition_qc: {{mode: "off"}}
transforms:
  FSC-A: {{kind: linear}}
  FSC-H: {{kind: linear}}
  SSC-A: {{kind: linear}}
  7AAD: {{kind: logicle, t: 262144, w: 0.5, m: 4.5, a: 0}}
populations:
  - name: cells
    parent: root
    dims: [FSC-A, SSC-A]
    method: cells
  - name: singlets
    parent: cells
    dims: [FSC-A, FSC-H]
    method: singlets
  - name: dead
    parent: singlets
    dims: [7AAD]
    method: fmo
    params: {params}
  - name: live
    parent: singlets
    expression: "!dead"
variables:
  viability_pct: {{numerator: live, denominator: singlets}}
"""
CONTROL = "{control: unstained, rule: relative}"
DIM_DEAD = Phenomena(dim_dead=0.35, spread={"PD1": 60.0})


def live_dead_product(tmp_path, seed, phen=DIM_DEAD, unstained=True):
    prod = simulate_product(f"D{seed}", seed, 20000, phenomena=phen)
    write_product(prod, tmp_path)
    manifest = pd.DataFrame(manifest_rows(prod))
    manifest["file"] = [str(tmp_path / f) for f in manifest["file"]]
    if not unstained:
        manifest = manifest[manifest["role"] != "unstained"]
    return prod, manifest


def live_dead_strategy(params: str = CONTROL):
    return parse_strategy(VIABILITY.format(params=params), "viability.yaml")
