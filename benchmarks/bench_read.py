"""Read throughput: tilpheno.read_fcs vs np.fromfile of the DATA segment, flowio and FlowKit.

Writes a 1,000,000-event x 14-channel float32 FCS 3.1 file (56 MB of DATA) to
benchmarks/_data/ (gitignored) once, then times each reader (best of ``--repeat`` runs, file in the
page cache after the first). ``read_fcs`` does more than ``np.fromfile``: it hashes the whole file
(SHA-256, in a parallel thread), converts to float64 and scales the time channel.

    .venv/bin/python benchmarks/bench_read.py [--events 1000000] [--repeat 5]
"""
from __future__ import annotations

import argparse
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


def best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--skip-flowkit", action="store_true", help="skip the (slow) flowio/FlowKit readers")
    args = parser.parse_args()

    from tilpheno.io.fcs import read_fcs

    path = Path(__file__).parent / "_data" / f"bench_{args.events}x{len(CHANNELS)}.fcs"
    if not path.exists():
        write_file(path, args.events)
    size = path.stat().st_size
    meta = read_fcs(path)
    start = int(meta.keywords["$BEGINDATA"])
    n_values = meta.n_events * len(CHANNELS)

    def fromfile():
        return np.fromfile(path, dtype="<f4", count=n_values, offset=start).reshape(-1, len(CHANNELS))

    def fromfile_f64():
        return fromfile().astype(np.float64)

    reference = fromfile_f64()
    reference[:, -1] *= 0.01
    assert np.array_equal(read_fcs(path).events, reference)

    def sha256_only():
        import hashlib
        import mmap

        with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            return hashlib.sha256(mapped).hexdigest()

    results = {
        "np.fromfile (float32, DATA only)": best(fromfile, args.repeat),
        "SHA-256 of the file alone (mmap)": best(sha256_only, args.repeat),
        "np.fromfile + astype(float64)": best(fromfile_f64, args.repeat),
        "tilpheno.read_fcs": best(lambda: read_fcs(path), args.repeat),
    }
    if not args.skip_flowkit:
        import flowio
        import flowkit

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            results["flowio.FlowData + as_array"] = best(lambda: flowio.FlowData(str(path)).as_array(), max(1, args.repeat // 2))
            results["flowkit.Sample + get_events('raw')"] = best(
                lambda: flowkit.Sample(str(path)).get_events("raw"), max(1, args.repeat // 2))
    base = results["np.fromfile (float32, DATA only)"]
    print(f"file: {path.name}, {size / 1e6:.1f} MB, {meta.n_events} events x {len(CHANNELS)} channels")
    for name, seconds in results.items():
        print(f"{name:40s} {seconds * 1000:8.1f} ms  {size / seconds / 1e6:8.0f} MB/s  {seconds / base:5.2f}x np.fromfile")


if __name__ == "__main__":
    main()
