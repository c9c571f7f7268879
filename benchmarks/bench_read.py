"""Read throughput: tilpheno.read_fcs vs np.fromfile of the DATA segment, flowio and FlowKit.

Writes a 1,000,000-event x 14-channel float32 FCS 3.1 file (56 MB of DATA) to
benchmarks/_data/ (gitignored) once, then times each reader ``--repeat`` times (file in the page
cache after the first run) and prints a markdown table: median and best wall time, throughput,
median ratio to ``np.fromfile`` and peak RSS while that reader ran.

    .venv/bin/python benchmarks/bench_read.py [--events 1000000] [--repeat 7] [--skip-flowkit]

What each row does:

- ``np.fromfile``: the DATA segment as float32, nothing else (no TEXT, no conversion): the limit.
- ``np.fromfile + astype(float64)``: the naive two-pass float64 read (a full float32 copy first).
- ``SHA-256 of the file``: hashing the whole file alone, streamed in 1 MiB blocks.
- ``read_fcs`` (SHA-256 not computed): HEADER + TEXT parsed, channels table, DATA decoded in one
  pass into float64, time x $TIMESTEP. ``FCSFile.sha256`` is computed on first access, so this row
  does not hash. The pipeline reads ``sha256`` for provenance, so its cost per file is the next row.
- ``read_fcs + .sha256``: the same plus the digest (what a pipeline run pays per file).
- ``flowio`` / ``FlowKit``: ``FlowData(path).as_array()`` and ``Sample(path).get_events('raw')``.

Before timing, ``read_fcs(path).events`` is checked to equal np.fromfile's array converted to
float64 with time x 0.01, and (unless --skip-flowkit) FlowKit's ``get_events('raw')`` exactly; its
``sha256`` to equal ``hashlib.sha256`` of the file's bytes.

Peak RSS: the process's high-water mark (VmHWM) is reset through /proc/self/clear_refs before each
reader and read after its runs; "peak RSS" is that mark, "+MB" its excess over the RSS before the
reader ran (the arrays the reader allocates; the interpreter, numpy, pandas and FlowKit imports are
in the baseline). Linux only; "n/a" elsewhere.

Measured 2026-11-21, 2 shared CPUs (other sessions running, load average 1.8-2.4), 1M x 14 float32,
56.0 MB, ``.venv/bin/python benchmarks/bench_read.py --repeat 7``, three runs; the run with the median
read_fcs ratio (run 1), ranges over the three runs in brackets:

| reader | median ms | x np.fromfile (wall) | x np.fromfile (CPU) | peak RSS MB (+MB) |
|---|---:|---:|---:|---:|
| np.fromfile (float32, DATA only) | 9.2 | 1.00x | 1.00x | 161 (+53) |
| np.fromfile + astype(float64) | 18.7 | 2.04x [2.04-2.20] | 2.05x | 267 (+160) |
| SHA-256 of the whole file alone | 36.9 | 4.03x [4.03-4.14] | 4.02x | 107 (+0) |
| tilpheno read_fcs (sha256 not computed) | 17.0 | **1.86x** [1.84-1.96] | 1.87x [1.84-1.95] | 214 (+107) |
| tilpheno read_fcs + .sha256 | 53.4 | 5.83x [5.83-6.10] | 5.86x | 214 (+107) |
| flowio.FlowData + as_array | 84.9 | 9.27x [9.06-9.27] | 8.91x | 377 (+160) |
| flowkit.Sample + get_events('raw') | 102.5 | 11.19x [11.19-11.35] | 10.99x | 377 (+160) |

Before (SHA-256 computed eagerly in a thread during the read, same command, interleaved runs):
read_fcs 59.8 and 61.1 ms (6.6x and 6.8x np.fromfile wall), 39.9 ms (4.4x) in the run where the hashing
thread found the second core free; 6.4-6.9x in CPU time; peak +164 MB (the file mapped for hashing). The remaining ~2x is the float64 output itself: the kernel zeroes the 112 MB
array on first touch (about 8 ms here, np.fromfile zeroes 56 MB), the DATA copy from the page cache
(about 6 ms, as np.fromfile) and the conversion (about 3 ms); one thread, no helper threads.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np

CHANNELS = ("FSC-A", "FSC-H", "SSC-A", "SSC-H", "FITC-A", "PE-A", "PerCP-Cy5-5-A", "APC-A", "APC-R700-A",
            "APC-H7-A", "BV421-A", "BV510-A", "BV605-A", "Time")


def write_file(path: Path, n_events: int) -> None:
    """A FACSDiva-like FCS 3.1 file: float32, little-endian, $TIMESTEP 0.01."""
    rng = np.random.default_rng(0)
    events = rng.lognormal(7, 1.2, size=(n_events, len(CHANNELS))).astype("<f4")
    events[:, -1] = np.arange(n_events, dtype=np.float32) / 100
    data = events.tobytes()
    kw = {"$BYTEORD": "1,2,3,4", "$DATATYPE": "F", "$MODE": "L", "$NEXTDATA": "0", "$PAR": str(len(CHANNELS)),
          "$TOT": str(n_events), "$TIMESTEP": "0.01", "$CYT": "bench"}
    for i, name in enumerate(CHANNELS, 1):
        kw.update({f"$P{i}N": name, f"$P{i}B": "32", f"$P{i}E": "0,0", f"$P{i}R": "262144", f"$P{i}G": "1"})
    kw["$BEGINDATA"] = kw["$ENDDATA"] = "0" * 20  # fixed width, filled below

    def text() -> bytes:
        return ("/" + "/".join(f"{k}/{v}" for k, v in kw.items()) + "/").encode()

    length = len(text())
    start = 58 + length
    end = start + len(data) - 1
    kw["$BEGINDATA"], kw["$ENDDATA"] = str(start).rjust(20, "0"), str(end).rjust(20, "0")
    assert len(text()) == length
    big = end > 99_999_999
    offsets = (58, 58 + length - 1, 0 if big else start, 0 if big else end, 0, 0)
    header = b"FCS3.1    " + b"".join(str(v).rjust(8).encode() for v in offsets)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(header + text() + data)


def _status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
        return True
    except OSError:
        return False


def measure(fn, repeat: int) -> dict:
    """Wall times of ``repeat`` calls (result dropped after each) and the peak RSS meanwhile."""
    before = _status_kb("VmRSS")
    can_reset = _reset_peak()
    times, cpu = [], []
    for _ in range(repeat):
        c0, t0 = time.process_time(), time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
        del result
    peak = _status_kb("VmHWM") if can_reset else None
    return {"median": statistics.median(times), "best": min(times), "runs": len(times), "cpu": statistics.median(cpu),
            "peak_mb": None if peak is None else peak / 1024,
            "extra_mb": None if peak is None or before is None else (peak - before) / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--skip-flowkit", action="store_true", help="skip the (slow) flowio/FlowKit readers")
    args = parser.parse_args()

    from tilpheno.io.fcs import read_fcs

    path = Path(__file__).parent / "_data" / f"bench_{args.events}x{len(CHANNELS)}.fcs"
    if not path.exists():
        write_file(path, args.events)
    size = path.stat().st_size
    first = read_fcs(path)
    start = int(first.keywords["$BEGINDATA"])
    n_values = first.n_events * len(CHANNELS)

    def fromfile():
        return np.fromfile(path, dtype="<f4", count=n_values, offset=start).reshape(-1, len(CHANNELS))

    def fromfile_f64():
        return fromfile().astype(np.float64)

    def sha256_only():
        digest, buffer = hashlib.sha256(), bytearray(1 << 20)
        view = memoryview(buffer)
        with open(path, "rb", buffering=0) as fh:
            while got := fh.readinto(buffer):
                digest.update(view[:got])
        return digest.hexdigest()

    def read_and_hash():
        fcs = read_fcs(path)
        fcs.sha256  # noqa: B018 - computed on first access
        return fcs

    # exactness first
    reference = fromfile_f64()
    reference[:, -1] *= 0.01
    assert np.array_equal(first.events, reference), "read_fcs disagrees with np.fromfile"
    assert first.sha256 == hashlib.sha256(path.read_bytes()).hexdigest(), "sha256 disagrees with hashlib"
    del reference, first
    checks = ["events == np.fromfile -> float64, time x 0.01", "sha256 == hashlib.sha256(file bytes)"]

    results = {
        "np.fromfile (float32, DATA only)": measure(fromfile, args.repeat),
        "np.fromfile + astype(float64)": measure(fromfile_f64, args.repeat),
        "SHA-256 of the whole file alone": measure(sha256_only, args.repeat),
        "tilpheno read_fcs (sha256 not computed)": measure(lambda: read_fcs(path), args.repeat),
        "tilpheno read_fcs + .sha256": measure(read_and_hash, args.repeat),
    }
    if not args.skip_flowkit:
        import flowio
        import flowkit

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            expected = flowkit.Sample(str(path)).get_events("raw")
            assert np.array_equal(read_fcs(path).events, expected), "read_fcs disagrees with FlowKit"
            checks.append("events == FlowKit Sample.get_events('raw')")
            del expected
            slow = max(3, args.repeat // 2)
            results["flowio.FlowData + as_array"] = measure(lambda: flowio.FlowData(str(path)).as_array(), slow)
            results["flowkit.Sample + get_events('raw')"] = measure(
                lambda: flowkit.Sample(str(path)).get_events("raw"), slow)

    base = results["np.fromfile (float32, DATA only)"]["median"]
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    print(f"file: {path.name}, {size / 1e6:.1f} MB, {n_values // len(CHANNELS)} events x {len(CHANNELS)} channels;"
          f" python {sys.version.split()[0]}, numpy {np.__version__}"
          + (f"; load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}" if load else ""))
    print(f"exact: {'; '.join(checks)}")
    print()
    cpu_base = results["np.fromfile (float32, DATA only)"]["cpu"]
    print("| reader | median ms | best ms | runs | MB/s (median) | x np.fromfile (median) | CPU ms (median) |"
          " x np.fromfile (CPU) | peak RSS MB (+MB) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, r in results.items():
        rss = "n/a" if r["peak_mb"] is None else f"{r['peak_mb']:.0f} (+{r['extra_mb']:.0f})"
        print(f"| {name} | {r['median'] * 1000:.1f} | {r['best'] * 1000:.1f} | {r['runs']} |"
              f" {size / r['median'] / 1e6:.0f} | {r['median'] / base:.2f}x | {r['cpu'] * 1000:.1f} |"
              f" {r['cpu'] / cpu_base:.2f}x | {rss} |")


if __name__ == "__main__":
    main()
