"""The command line's help: every command's and option's text reaches the terminal whole and
reflowed (Typer's markdown mode joins a docstring's wrapped lines into paragraphs; it drops what
looks like an HTML tag, e.g. ``<OUT>``, so the texts must not use one)."""
import re

import pytest
from typer.main import get_command
from typer.testing import CliRunner

from tilpheno.cli import app

ROOT = get_command(app)


def _commands(group, prefix=()):
    for name, command in sorted(group.commands.items()):
        yield prefix + (name,), command
        if hasattr(command, "commands"):   # a group (Typer 0.29 has its own copy of Click: not a click.Group)
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


def _readme_commands() -> dict[str, str]:
    """README's "Commands" block, one entry per command (continuation lines joined; a command
    shown twice, as `plan`, has both lines)."""
    from pathlib import Path

    text = (Path(__file__).parents[1] / "README.md").read_text(encoding="utf-8")
    block = text.split("## Commands", 1)[1].split("```", 2)[1]
    entries: dict[str, str] = {}
    name = None
    for line in block.splitlines():
        if line.startswith("tilpheno "):
            name = line.split()[1]
            entries[name] = entries.get(name, "") + " " + line
        elif name is not None:
            entries[name] += " " + line
    return entries


def _options(command) -> dict:
    """Every option of a command and of its subcommands (not --help): each of its names -> its
    long name (``-o`` -> ``--out``)."""
    found = {}
    commands = [command] + [c for _, c in _commands(command)] if hasattr(command, "commands") else [command]
    for c in commands:
        for p in c.params:
            if getattr(p, "param_type_name", "") == "option" and "--help" not in p.opts:
                long = max(p.opts, key=len)
                found.update({o: (long, p.default) for o in p.opts})
    return found


def test_readme_commands_block_lists_every_option_with_its_default():
    """Each command's options in `--help` and in README's "Commands" block are the same set, and an
    option the README shows with a number (`--permutations 10000`) shows its default."""
    entries = _readme_commands()
    problems = []
    for name, command in ROOT.commands.items():
        entry = entries.get(name)
        if entry is None:
            problems.append(f"{name}: not in README")
            continue
        options = _options(command)
        shown = dict(re.findall(r"(?<=[\s\[(|])(--?[a-z][a-z0-9-]*)(?:[ =]([^\s\]|)]+))?", entry))
        shown_long = {options[o][0] for o in shown if o in options}
        problems += [f"{name} {o}: in --help, not in README"
                     for o in sorted({long for long, _ in options.values()} - shown_long)]
        problems += [f"{name} {o}: in README, no such option" for o in sorted(set(shown) - set(options))]
        for flag, value in shown.items():
            default = options.get(flag, (None, None))[1]
            if re.fullmatch(r"\d+(\.\d+)?(,\d+(\.\d+)?)*", value or "") and default is not None:
                if [float(v) for v in value.split(",")] != [float(v) for v in str(default).split(",")]:
                    problems.append(f"{name} {flag}: README {value}, default {default}")
    assert not problems, "\n".join(problems)


def test_every_reports_mode_is_documented():
    """`process --reports none` (the library's make_reports=False) was accepted but neither its
    --help nor README's Commands block named it."""
    from tilpheno.pipeline import REPORT_MODES

    option = next(p for p in ROOT.commands["process"].params if "--reports" in p.opts)
    shown = re.search(r"--reports ([a-z|]+)", _readme_commands()["process"]).group(1).split("|")
    assert shown == list(REPORT_MODES)
    assert all(re.search(rf"\b{mode}:", option.help) for mode in REPORT_MODES), option.help


def _inline_commands() -> list[tuple[str, str]]:
    """Every command line quoted in README.md, docs/*.md and sample_fcs/README.md (`tilpheno ...` in backticks,
    and the lines of fenced blocks), as (file, text), the text up to the end of the quote or line."""
    from pathlib import Path

    root = Path(__file__).parents[1]
    found = []
    for path in [root / "README.md", root / "sample_fcs" / "README.md", *sorted((root / "docs").glob("*.md"))]:
        text = path.read_text(encoding="utf-8")
        quoted = re.findall(r"`(tilpheno [^`]+)`", text)
        fenced = [line for block in text.split("```")[1::2] for line in block.splitlines()
                  if line.lstrip().startswith("tilpheno ")]
        found += [(path.name, " ".join(q.split())) for q in quoted + fenced]
    return found


def test_every_option_a_doc_quotes_exists():
    """A command line quoted anywhere in the docs names a command and only options it has (a group such as
    `users`: options of any of its subcommands). A quoted option that was renamed or removed would send a
    new user to an error."""
    problems = []
    for name, line in _inline_commands():
        command = ROOT.commands.get(line.split()[1])
        if command is None:
            if not re.fullmatch(r"--?[a-z][a-z-]*", line.split()[1]):   # `tilpheno --verbose ...`
                problems.append(f"{name}: `{line}`: no command {line.split()[1]!r}")
            continue
        options = _options(command)
        problems += [f"{name}: `{line}`: {line.split()[1]} has no option {flag}"
                     for flag in re.findall(r"(?<=[\s\[(|])(--?[a-z][a-z0-9-]*)", line) if flag not in options]
    assert not problems, "\n".join(problems)



def test_biomarkers_help_says_what_bootstrap_0_leaves_out(tmp_path):
    """`--bootstrap 0` writes no time_auc.csv (nor validation.csv, calibration.csv), while its help said "0 = none" of
    the "time-dependent AUC CIs", as if the AUCs were written without CIs -> the help says none of the three is
    done, and --roc-times' help says it too."""
    from pathlib import Path

    ref = Path(__file__).parent / "reference"
    run = CliRunner().invoke(app, ["biomarkers", "--phenotypes", str(ref / "til_cohort_phenotypes.csv"), "--outcomes",
                                   str(ref / "til_cohort_outcomes.csv"), "-o", str(tmp_path / "bio"), "--markers",
                                   "cd8_pct_of_cd3", "--endpoints", "pfs", "--permutations", "0", "--bootstrap", "0"])
    assert run.exit_code == 0, run.output   # PFS alone: the three files are per endpoint, one is enough to miss
    assert not any((tmp_path / "bio" / f).exists() for f in ("time_auc.csv", "validation.csv", "calibration.csv"))
    result = CliRunner().invoke(app, ["biomarkers", "--help"], env={"COLUMNS": "400"}, terminal_width=400)
    text = " ".join(result.output.split())
    assert "internal validation, calibration and time-dependent AUC (with its CIs); 0: none of these three" in text
    assert "of the time-dependent AUC (none with --bootstrap 0)" in text


def test_python_m_tilpheno_is_the_command_line():
    """``python -m tilpheno`` (a venv without its scripts on PATH) said "No module named
    tilpheno.__main__"; it is now the ``tilpheno`` command: the same commands in its help."""
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "tilpheno", "--help"], capture_output=True, text=True,
                            env={**__import__("os").environ, "COLUMNS": "200"}, timeout=120)
    assert result.returncode == 0, result.stderr
    assert all(name in result.stdout for name, *_ in (p for p, _ in COMMANDS if len(p) == 1)), result.stdout


def test_export_approved_help_names_the_audited_user_as_recorded():
    """export-approved's help said certificates are audited as "user cli:LOGIN" and named an
    internal function; the trail records ``cli:`` and the login (``review.cli._actor``)."""
    from tilpheno.review.cli import _actor

    result = CliRunner().invoke(app, ["export-approved", "--help"], env={"COLUMNS": "200"}, terminal_width=200)
    text = " ".join(result.output.split())
    assert "cli:LOGIN" not in text and "write_approved_export" not in text
    assert "cli: and your login name, e.g. cli:root" in text and _actor().startswith("cli:")


def test_every_option_has_a_help_text():
    """`serve --help` showed `--port [default: 8765]` and `users set-password --help` showed
    `--password-stdin` with no word of what they do (a new user scripting an account's password
    could not tell that only the first line of standard input is read). Every option of every
    command says what it does."""
    bare = [f"{' '.join(path)} {max(p.opts, key=len)}" for path, command in COMMANDS for p in command.params
            if getattr(p, "param_type_name", "") == "option" and not (p.help or "").strip()]
    assert not bare, bare
