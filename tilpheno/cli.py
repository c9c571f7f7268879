"""Command-line interface: a thin layer over the library API.

Each command imports what it needs inside its body, so ``tilpheno --help`` starts fast.
Errors from bad input (``TilphenoError``) are printed as one line and exit with status 2.
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="tilpheno: phenotype reports and biomarker analyses for TIL infusion products.",
)


def _fail(exc: Exception) -> None:
    typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=2)


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", help="Print the version and exit.", is_eager=True),
) -> None:
    if version:
        from tilpheno import __version__

        typer.echo(__version__)
        raise typer.Exit()


# --- commands are added below, one section per stage of the data flow ---


def main() -> None:  # console-script entry point
    app()


if __name__ == "__main__":
    main()
