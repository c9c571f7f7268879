"""The command line's help: every command's and option's text reaches the terminal whole and
reflowed (Typer's markdown mode joins a docstring's wrapped lines into paragraphs; it drops what
looks like an HTML tag, e.g. ``<OUT>``, so the texts must not use one)."""
import re

import click
import pytest
from typer.main import get_command
from typer.testing import CliRunner

from tilpheno.cli import app

ROOT = get_command(app)


def _commands(group, prefix=()):
    for name, command in sorted(group.commands.items()):
        yield prefix + (name,), command
        if isinstance(command, click.Group):
            yield from _commands(command, prefix + (name,))


COMMANDS = list(_commands(ROOT))


def _words(text: str) -> list[str]:
    return re.findall(r"[A-Za-z0-9][A-Za-z0-9_.:/+-]*", text.replace("`", ""))


@pytest.mark.parametrize("path", [p for p, _ in COMMANDS], ids=" ".join)
def test_every_word_of_a_commands_help_is_shown(path):
    command = dict(COMMANDS)[path]
    result = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "80"}, terminal_width=80)
    assert result.exit_code == 0, result.output
    shown = set(_words(result.output))
    texts = [command.help or ""] + [p.help or "" for p in command.params if getattr(p, "help", None)]
    missing = [w for text in texts for w in _words(text) if w not in shown]
    assert not missing, (path, missing[:10])


def test_a_wrapped_docstring_is_shown_as_one_paragraph():
    """process's docstring wraps "Incremental: ... since the last run into OUT" over two source
    lines; at 80 columns the terminal shows the words "the last run into OUT" on one line (a kept
    source line break would end a line after "run")."""
    result = CliRunner().invoke(app, ["process", "--help"], env={"COLUMNS": "80"}, terminal_width=80)
    lines = [" ".join(line.split()) for line in result.output.splitlines()]
    assert any("the last run into OUT" in line for line in lines), result.output[:1500]


def test_process_help_says_a_previous_run_needs_overwrite():
    """OUT holding a previous run is refused without --overwrite; the help said re-running overwrote it."""
    result = CliRunner().invoke(app, ["process", "--help"], env={"COLUMNS": "200"}, terminal_width=200)
    text = " ".join(result.output.split())
    assert "one holding a previous run needs --overwrite" in text
    assert "re-running overwrites" not in text
