"""Exception types. Every message names the file, field or row at fault."""
from __future__ import annotations


def closest_match(word: str, choices) -> str | None:
    """The choice most like ``word`` (``difflib``, cutoff 0.6; case ignored in the comparison), as
    written among ``choices``; None when none is close. The "did you mean" of every message."""
    import difflib

    written: dict[str, str] = {}
    for choice in sorted(map(str, choices)):
        written.setdefault(choice.casefold(), choice)
    close = difflib.get_close_matches(str(word).casefold(), list(written), n=1, cutoff=0.6)
    return written[close[0]] if close else None


def did_you_mean(word: str, choices) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``choices`` (:func:`closest_match`: case ignored,
    ``PFS_Event`` offered for ``pfs_event``), or an empty string: the tail of a one-line error."""
    close = closest_match(word, choices)
    return f" (did you mean '{close}'?)" if close else ""


class TilphenoError(Exception):
    """Base class for all errors tilpheno raises on bad input."""


class FCSReadError(TilphenoError):
    """An FCS file could not be read. The message is one line: '<path>: <problem>'."""

    def __init__(self, path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class PanelError(TilphenoError):
    """A detector could not be mapped to a required marker (message lists the file's channels).
    ``path``: the file it is about, ``problem``: what is wrong, on one line without the file and
    without what the message adds for reference (the file's channels, how a panel file names a
    marker): ``marker(s) CD56, PD1 not found``, as a product's failure names it
    (:func:`tilpheno.panel.panel_error_headline`); both '' when the message names no file."""

    def __init__(self, message: str, *, path: str = "", problem: str = ""):
        super().__init__(message)
        self.path = path
        self.problem = problem

    @classmethod
    def at(cls, path, problem: str, detail: str = "") -> "PanelError":
        """The error ``'<path>: <problem><detail>'`` (``detail``: what follows for reference)."""
        return cls(f"{path}: {problem}{detail}", path=str(path), problem=problem)


class CompensationError(TilphenoError):
    """A spillover matrix is malformed or does not match the file's detectors."""


class StrategyError(TilphenoError):
    """A gating strategy file is invalid; the message names the file and the key/line."""


class GatingError(TilphenoError):
    """A gate could not be placed or applied."""


class TooFewEventsError(GatingError):
    """A gate could not be placed: only ``count`` usable events, ``needed`` at least (``what``: the gate,
    as the message begins)."""

    def __init__(self, what: str, *, count: int, needed: int):
        super().__init__(f"{what}: only {count} events to place the gate on (need >= {needed})")
        self.what = what
        self.count = count
        self.needed = needed


class TableError(TilphenoError):
    """A manifest, outcomes or phenotype table is invalid; the message names file, row and column.
    ``row``: the table's row (its line, as the message numbers it) when the problem is one row's,
    so that a reader checking row by row can report the table's first problem first."""

    def __init__(self, message: str, *, row: int | None = None):
        self.row = row
        super().__init__(message)


class StudyError(TilphenoError):
    """A study configuration (study.yaml, vocabulary) is invalid; the message names the file and key."""


class NoInputError(TilphenoError):
    """A run found nothing to process (no FCS files in the folder)."""


class RunStoppedError(TilphenoError):
    """A run stopped before it finished by a failure outside its products (the Dask cluster dropped
    its tasks or has no worker). Raised within the output folder's claim; ``run_process`` adds what
    became of OUT once the claim is released (``tilpheno.io.outdir.left_behind``)."""
