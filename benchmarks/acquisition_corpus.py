"""Acquisition QC on real FCS files: no crash, and the flag list (issue 15), run by hand.

Every readable FCS file under the given folders goes through ``check_acquisition`` with the default
settings (remove mode); one line per file: events, time channel, % anomalous, flags. Unreadable
files are listed as such (the reader's problem, not the QC's).

    PYTHONPATH=. .venv/bin/python benchmarks/acquisition_corpus.py ../shared/fcs_corpus tests/data/fcs
"""
from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

from tilpheno.acquisition import check_acquisition
from tilpheno.errors import FCSReadError
from tilpheno.io.fcs import read_fcs
from tilpheno.io.manifest import list_fcs_files


def main(folders: list[str]) -> int:
    codes: Counter = Counter()
    crashed = 0
    for folder in folders:
        for path in list_fcs_files(Path(folder)):
            name = str(path.relative_to(folder))
            try:
                fcs = read_fcs(path)
            except FCSReadError as exc:
                print(f"{name}: unreadable ({exc.problem})")
                continue
            try:
                qc = check_acquisition(fcs.events, fcs.channel_names, fcs.channels["pnr"].astype(float).tolist())
            except Exception as exc:   # the point of this script: count crashes
                crashed += 1
                print(f"{name}: CRASH {type(exc).__name__}: {exc}")
                continue
            found = [f.code for f in qc.findings]
            codes.update(set(found))
            print(f"{name}: {qc.n_events} events, time {qc.time_channel or '-'}, {qc.removed_pct:.1f}% anomalous; "
                  + ("; ".join(f"{f.code}: {f.message}" for f in qc.findings) or "no flags"))
    print(f"\ncrashes: {crashed}; files per flag: {dict(sorted(codes.items()))}")
    return 1 if crashed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:] or ["tests/data/fcs"]))
