"""The commands the docs show are commands this code accepts: every `ddim …`, `torchrun … -m ddim …`
and `python -m benchmarks.X …` line in a code block of README.md or docs/, and every example of
a subcommand's --help, parses with the options
it names (nothing runs; synopsis lines with [optional] parts are skipped; any device counts as
present)."""

import argparse
import importlib
import re
import shlex
from pathlib import Path

import pytest

from ddim.cli import SUBCOMMANDS, _args, build_parser

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.S | re.M)
PREFIX = r"(nice -n -?\d+\s+|env\s+|[A-Z_][A-Z0-9_]*=\S*\s+)"  # what may run a command: nice, env, VAR=…
PROGRAM = re.compile(rf"^\s*{PREFIX}*(\.venv/bin/)?(ddim|torchrun|python3?)\s")


def command(line: str) -> tuple[str, list[str]] | None:
    """(program, arguments) of a command line: 'ddim' or the module `python -m` runs, after any
    nice, env and VAR=value prefixes; torchrun's own options dropped. None for other lines and
    for synopses."""
    if not PROGRAM.match(line) or "[" in line.split("#")[0] or "…" in line or "..." in line:
        return None
    try:
        words = shlex.split(re.sub(rf"^\s*{PREFIX}*", "", line), comments=True)
    except ValueError:  # an open quote: the first line of a multi-line `python -c "…"`
        return None
    if words[0].endswith("ddim"):
        return "ddim", words[1:]
    if "-m" in words:
        module = words[words.index("-m") + 1]
        return module, words[words.index("-m") + 2 :]
    return None


def help_examples() -> dict[str, str]:
    """The examples of each subcommand's --help, the command without its explanation (which
    follows two or more spaces), as one block per subcommand."""
    (subcommands,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return {
        f"ddim {name} --help": "\n".join(re.split(r"\s{2,}", ln.strip())[0] for ln in p.epilog.splitlines())
        for name, p in subcommands.choices.items()
        if p.epilog
    }


def documented_commands() -> list:
    blocks = [(page.relative_to(ROOT), block) for page in PAGES for block in FENCE.findall(page.read_text())]
    found = []
    for where, block in [*blocks, *help_examples().items()]:
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():
            if (parsed := command(line)) is not None:
                found.append(pytest.param(*parsed, id=f"{where}: {line.strip()[:60]}"))
    return found


COMMANDS = documented_commands()


def test_the_docs_show_commands_of_every_kind():
    programs = {p.values[0] for p in COMMANDS}
    assert {"ddim", "benchmarks.samplers", "benchmarks.recognisable", "benchmarks.train_mnist"} <= programs
    assert any(p.id.startswith("docs/samplers.md: nice -n 19 env") for p in COMMANDS)
    assert sum(p.values[0] == "ddim" for p in COMMANDS) > 40
    assert len(help_examples()) == len(SUBCOMMANDS)  # every subcommand's --help has examples


@pytest.mark.parametrize(("program", "argv"), COMMANDS)
def test_a_documented_command_parses(monkeypatch, program, argv):
    monkeypatch.setattr(_args, "_available", lambda device: True)  # the docs' machines have CUDA
    if program == "ddim":
        args = build_parser().parse_args(argv)
        assert args.command == argv[0]
    else:
        parse_args = importlib.import_module(program).parse_args
        parse_args(argv)  # an unknown option or a bad value exits (SystemExit), failing the test
