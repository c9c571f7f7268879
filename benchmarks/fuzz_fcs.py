"""Coverage-guided fuzzing of the FCS reader with atheris (optional extra ``fuzz``).

Each input is written to a temporary file and read with ``read_fcs`` and ``read_fcs_metadata``
(and the TEXT parser on the raw bytes). Any exception other than ``FCSReadError``, a multi-line
error message, or events whose shape disagrees with ``n_events`` x channels is a finding: atheris
stops and saves the input as ``crash-*``.

    .venv/bin/pip install -e '.[fuzz]'
    .venv/bin/python benchmarks/fuzz_fcs.py -max_total_time=300 benchmarks/_fuzz_corpus
    .venv/bin/python benchmarks/fuzz_fcs.py crash-<hash>          # replay one finding

With a corpus folder, it is seeded (once) with small valid files written by tests/malformed_fcs.py
and the small files of tests/data/fcs.
"""
from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import atheris

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

with atheris.instrument_imports():
    from tilpheno.errors import FCSReadError
    from tilpheno.io.fcs import read_fcs, read_fcs_metadata
    from tilpheno.io.text import parse_text

_TMP = Path(tempfile.mkdtemp(prefix="fuzz_fcs_")) / "input.fcs"


def _check(reader) -> None:
    try:
        fcs = reader(_TMP)
    except FCSReadError as exc:
        if "\n" in str(exc):
            raise AssertionError(f"multi-line error message: {exc!r}") from None
        return
    if fcs.events is not None and fcs.events.shape != (fcs.n_events, len(fcs.channels)):
        raise AssertionError(f"events shape {fcs.events.shape} vs n_events {fcs.n_events} x {len(fcs.channels)}")


def test_one_input(data: bytes) -> None:
    _TMP.write_bytes(data)
    _check(read_fcs)
    _check(read_fcs_metadata)
    try:
        parse_text(data[58:2000] if len(data) > 60 else data, "fuzz")
    except FCSReadError:
        pass


def _seed(corpus: Path) -> None:
    """Write seed inputs into an empty corpus folder."""
    import malformed_fcs

    corpus.mkdir(parents=True, exist_ok=True)
    if any(corpus.iterdir()):
        return
    for variant in malformed_fcs.variants():
        if variant.content is not None and len(variant.content) < 20000:
            (corpus / f"seed_{variant.name}").write_bytes(variant.content)
    for path in (ROOT / "tests" / "data" / "fcs").rglob("*"):
        if path.suffix.lower() in (".fcs", ".lmd") and path.stat().st_size < 100_000:
            (corpus / f"seed_{path.name}").write_bytes(path.read_bytes())


def main() -> None:
    folders = [a for a in sys.argv[1:] if not a.startswith("-") and (Path(a).is_dir() or not Path(a).exists())]
    for folder in folders:
        _seed(Path(folder))
    atheris.Setup(sys.argv, test_one_input)
    try:
        atheris.Fuzz()
    finally:
        if _TMP.exists():
            os.unlink(_TMP)


if __name__ == "__main__":
    main()
