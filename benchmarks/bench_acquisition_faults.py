"""Acquisition QC against faults injected into real event streams, with per-event truth; run by hand.

``bench_acquisition_qc.py`` scores simulated tubes; here the host files are real FCS files (every
readable file under the given folders with an advancing time channel and at least 1,600 events;
files with identical events counted once), so the QC meets real noise, real populations and real
instrument quirks. For each host file and each fault kind and size, ``--draws`` faults are drawn
(random place and strength within the size), injected into a copy of the events, and
``check_acquisition`` (default settings, ``remove`` mode) is run on the clean and the faulty copy.

Fault kinds (``n`` = the file's events; times rebuilt from the inter-arrival times, so Time stays
monotonic; values clipped to ``$PnR``):

- ``clog <L>``: a stretch of ``L`` (1, 3, 8 %) of the events starts after a pause with no events
  (0.5-2 times the stretch's normal duration) and its inter-arrival times are divided by a rate
  factor of 0.1-0.4. Truth: the stretch's events.
- ``burst <F>``: debris mixed into a stretch of 3-8 % of the events: ``F`` (2, 5, 10, 20 %) of the
  stretch's event count is added as debris, at random times within it. A debris event is a random
  event of the file with its scatter (FSC/SSC) and fluorescence values multiplied by one factor,
  log-uniform in 0.03-0.15 (small and dim); event counters (Miltenyi HDR-CE) keep the value of the
  event before. Truth: the debris events.
- ``shift <S>``: every fluorescence channel's gain changes by ``S`` (10, 20, 35 %; up or down at
  random) from a point at 60-85 % of the file to its end (a laser or PMT step). Truth: the events
  after the step.
- ``linear <G>`` / ``curved <G>``: every fluorescence channel's gain drifts from 1, starting at
  30-60 % of the file, to ``1 -/+ G`` (20, 40 %) at its end, linearly (``u``) or accelerating
  (``u^2``; ``u`` from 0 to 1 over the drift). Truth: the events whose gain is off by more than
  10 %.

Per kind and size: ``detected`` = share of faults with at least half of their truth events
removed; ``recall`` = mean share of truth events removed; ``false rm`` = mean % of the good
events removed that the clean copy's QC kept (what the fault cost beyond the host file's own
findings); ``false out`` = the same outside the fault's stretch (a QC of time segments removes a
burst's stretch with its good events; outside it nothing should go). ``clean`` rows: the % of
events the QC removes from the unmodified host files.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_acquisition_faults.py \\
        ../shared/fcs_corpus tests/data sample_fcs --draws 3 --seed 7
"""
from __future__ import annotations

import argparse
import hashlib
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tilpheno.acquisition import AcquisitionSettings, check_acquisition, find_time_channel, is_counter, monotonic_time
from tilpheno.errors import FCSReadError
from tilpheno.io.fcs import read_fcs
from tilpheno.io.manifest import list_fcs_files

MIN_EVENTS = 1_600        # fewer: the QC skips the file (8 bins of 200)
DRIFT_TRUTH = 0.10        # |gain - 1| above which a drifting event counts as affected
SIZES = {"clog": (0.01, 0.03, 0.08), "burst": (0.02, 0.05, 0.10, 0.20), "shift": (0.10, 0.20, 0.35),
         "linear": (0.20, 0.40), "curved": (0.20, 0.40)}


@dataclass
class Host:
    """A real file's events and what the injection needs of them."""

    name: str
    events: np.ndarray
    names: list[str]
    ranges: list[float]
    time: int
    scatter: list[int]
    fluorescence: list[int]
    counters: list[int]


@dataclass
class Injected:
    """A faulty copy: events, truth per event, the fault's stretch per event, and the host event each
    event comes from (-1: an added event)."""

    events: np.ndarray
    truth: np.ndarray
    stretch: np.ndarray
    origin: np.ndarray


def load_hosts(folders: list[str]) -> list[Host]:
    """Readable files with an advancing time channel and at least ``MIN_EVENTS`` events, each set of
    events once (the corpus and its copy under tests/data are one host)."""
    hosts, seen = [], set()
    for folder in folders:
        for path in list_fcs_files(Path(folder)):
            try:
                fcs = read_fcs(path)
            except FCSReadError:
                continue
            events = np.asarray(fcs.events, dtype=np.float64)
            names = [str(c) for c in fcs.channel_names]
            tname = find_time_channel(names)
            digest = hashlib.sha256(events.tobytes()).hexdigest()
            if tname is None or events.shape[0] < MIN_EVENTS or digest in seen:
                continue
            elapsed, _ = monotonic_time(events[:, names.index(tname)])
            if not elapsed[-1] > elapsed[0]:
                continue
            seen.add(digest)
            events[:, names.index(tname)] = elapsed   # resets stitched, as the QC does
            counters = [j for j, c in enumerate(names) if c != tname and is_counter(events[:, j])]
            signal = [j for j, c in enumerate(names) if c != tname and not c.upper().endswith("-W")
                      and j not in counters]
            scatter = [j for j in signal if names[j].upper().startswith(("FSC", "SSC"))]
            hosts.append(Host(str(path), events, names, fcs.channels["pnr"].astype(float).tolist(),
                              names.index(tname), scatter, [j for j in signal if j not in scatter], counters))
    return hosts


def _stretch(rng: np.random.Generator, n: int, length: float, low: float = 0.05, high: float = 0.95) -> tuple[int, int]:
    m = max(1, int(round(length * n)))
    a = int(rng.integers(int(low * n), max(int(low * n) + 1, int(high * n) - m)))
    return a, min(n, a + m)


def _clip(host: Host, events: np.ndarray) -> np.ndarray:
    top = np.array([r if r > 1 else np.inf for r in host.ranges])
    top[host.time] = np.inf
    return np.minimum(events, top)


def inject(host: Host, kind: str, size: float, rng: np.random.Generator) -> Injected:
    """A copy of ``host``'s events with one fault of ``kind`` and ``size`` (module docstring)."""
    ev = host.events.copy()
    n = ev.shape[0]
    gaps = np.diff(ev[:, host.time], prepend=0.0)   # inter-arrival times (the first: its time)
    origin = np.arange(n)
    stretch = np.zeros(n, dtype=bool)
    if kind == "clog":
        a, b = _stretch(rng, n, size)
        pause = rng.uniform(0.5, 2.0) * float(np.sum(gaps[a:b]))   # the stretch's normal duration x 0.5-2
        gaps[a:b] /= rng.uniform(0.1, 0.4)
        gaps[a] += pause
        stretch[a:b] = True
        ev[:, host.time] = np.cumsum(gaps)
        return Injected(ev, stretch.copy(), stretch, origin)
    if kind == "burst":
        a, b = _stretch(rng, n, rng.uniform(0.03, 0.08))
        k = max(1, int(round(size * (b - a))))
        debris = ev[rng.integers(0, n, k)].copy()
        cols = host.scatter + host.fluorescence
        debris[:, cols] *= np.exp(rng.uniform(np.log(0.03), np.log(0.15), (k, 1)))
        t = ev[:, host.time]
        debris[:, host.time] = np.sort(rng.uniform(t[a], t[b - 1], k))
        at = np.searchsorted(t[a:b], debris[:, host.time], side="right") + a
        debris[:, host.counters] = ev[at - 1][:, host.counters]   # event counters stay non-decreasing
        out = np.insert(ev, at, debris, axis=0)
        truth = np.insert(np.zeros(n, dtype=bool), at, True)
        stretch = np.insert(np.arange(n) >= a, at, True) & np.insert(np.arange(n) < b, at, True)
        return Injected(out, truth, stretch, np.insert(origin, at, -1))
    if kind == "shift":
        a = int(rng.uniform(0.60, 0.85) * n)
        factor = 1.0 + size if rng.random() < 0.5 else 1.0 - size
        ev[a:, host.fluorescence] *= factor
        stretch[a:] = True
        return Injected(_clip(host, ev), stretch.copy(), stretch, origin)
    if kind in ("linear", "curved"):
        a = int(rng.uniform(0.30, 0.60) * n)
        u = np.linspace(0.0, 1.0, n - a)
        sign = 1.0 if rng.random() < 0.5 else -1.0
        gain = np.ones(n)
        gain[a:] = 1.0 + sign * size * (u if kind == "linear" else u * u)
        ev[:, host.fluorescence] *= gain[:, None]
        truth = np.abs(gain - 1.0) > DRIFT_TRUTH
        stretch[a:] = True
        return Injected(_clip(host, ev), truth, stretch, origin)
    raise ValueError(f"fault kind {kind!r}: must be one of {sorted(SIZES)}")


def qc_mask(host: Host, events: np.ndarray, settings: AcquisitionSettings) -> np.ndarray:
    return check_acquisition(events, host.names, host.ranges, settings).anomalous


def score(fault: Injected, removed: np.ndarray, clean_removed: np.ndarray) -> tuple[float, float, float]:
    """(recall, false removal %, false removal % outside the fault's stretch); good events the clean
    copy's QC removed already are not counted."""
    recall = float(np.mean(removed[fault.truth])) if fault.truth.any() else 0.0
    was = np.zeros(fault.origin.size, dtype=bool)
    was[fault.origin >= 0] = clean_removed[fault.origin[fault.origin >= 0]]
    good = ~fault.truth & ~was
    outside = good & ~fault.stretch
    false = 100.0 * float(np.mean(removed[good])) if good.any() else 0.0
    false_out = 100.0 * float(np.mean(removed[outside])) if outside.any() else 0.0
    return recall, false, false_out


def group(host: Host) -> str:
    """``simulated`` for the project's simulated files (sample_fcs, tests/data/newlab), else ``real``."""
    return "simulated" if "sample_fcs" in host.name or "newlab" in host.name else "real"


def run(hosts: list[Host], draws: int, seed: int, settings: AcquisitionSettings) -> dict:
    rng = np.random.default_rng(seed)
    rows: dict[tuple[str, str, float], list[tuple[float, float, float]]] = {}
    for host in hosts:
        clean = qc_mask(host, host.events, settings)
        rows.setdefault((group(host), "clean", 0.0), []).append((0.0, 100.0 * float(clean.mean()), 0.0))
        for kind, sizes in SIZES.items():
            for size in sizes:
                for _ in range(draws):
                    fault = inject(host, kind, size, rng)
                    removed = qc_mask(host, fault.events, settings)
                    rows.setdefault((group(host), kind, size), []).append(score(fault, removed, clean))
    return rows


def table(rows: dict) -> str:
    out = ["| hosts | fault | size | faults | detected % | recall % | false rm % | false out % |",
           "|---|---|---|---|---|---|---|---|"]
    for (grp, kind, size), values in sorted(rows.items(), key=lambda kv: (kv[0][0], list(SIZES).index(kv[0][1])
                                                                            if kv[0][1] in SIZES else -1, kv[0][2])):
        v = np.array(values)
        if kind == "clean":
            out.append(f"| {grp} | clean | - | {len(v)} files | - | - | removed: mean {v[:, 1].mean():.2f}, "
                       f"max {v[:, 1].max():.2f} | - |")
            continue
        out.append(f"| {grp} | {kind} | {100 * size:g} % | {len(v)} | {100 * np.mean(v[:, 0] >= 0.5):.0f} | "
                   f"{100 * v[:, 0].mean():.0f} | {v[:, 1].mean():.2f} | {v[:, 2].mean():.2f} |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("folders", nargs="+")
    ap.add_argument("--draws", type=int, default=3, help="faults per host file, kind and size")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--quantiles", type=float, nargs="+", help="the QC's quantiles (default: the settings' default)")
    args = ap.parse_args()
    settings = AcquisitionSettings.from_mapping({"quantiles": args.quantiles} if args.quantiles else {})
    print(f"quantiles {settings.quantiles}")
    hosts = load_hosts(args.folders)
    print(f"{len(hosts)} host files: " + ", ".join(Path(h.name).name for h in hosts if group(h) == "real")
          + f" + {sum(group(h) == 'simulated' for h in hosts)} simulated")
    t0 = time.process_time()
    rows = run(hosts, args.draws, args.seed, settings)
    print(table(rows))
    print(f"QC CPU {time.process_time() - t0:.0f} s")


if __name__ == "__main__":
    main()
