"""Write ``docs/cli.md``: every command's ``--help``, as the installed parser prints it.

``tests/test_docs.py`` compares the file with :func:`reference` (under another Python version, whose argparse
lays help out differently, the options each command lists), so an option added, renamed or re-explained
in ``sam3dseg.cli`` fails the suite until this script is run again. The width is fixed (100 columns) so the
text does not depend on the terminal it was made in.

    python docs/make_cli.py            # rewrite docs/cli.md
"""

from __future__ import annotations

import argparse
import functools
import platform
from pathlib import Path

from sam3dseg.cli import _parser

WIDTH = 100
OUT = Path(__file__).resolve().parent / "cli.md"
PYTHON = ".".join(platform.python_version_tuple()[:2])


def _help(parser: argparse.ArgumentParser) -> str:
    kind = parser.formatter_class
    parser.formatter_class = functools.partial(kind, width=WIDTH)
    try:
        return parser.format_help().rstrip()
    finally:
        parser.formatter_class = kind


def reference() -> str:
    """The page: the top-level help, then each command's, in the order ``sam3dseg --help`` lists them."""
    parser = _parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    parts = [
        "# Command-line reference",
        "",
        "Every option of every command, as `sam3dseg COMMAND --help` prints it. Made by `python docs/make_cli.py`",
        "from the parser itself (`tests/test_docs.py` fails when this page and the parser differ). What the",
        "commands are for, in order of use: the [README](../README.md#commands) and [usage.md](usage.md).",
        f"(argparse of Python {PYTHON}; other versions lay the same options out slightly differently.)",
        "",
        "## sam3dseg",
        "",
        "```text",
        _help(parser),
        "```",
    ]
    for name, sub in commands.choices.items():
        parts += ["", f"## sam3dseg {name}", "", "```text", _help(sub), "```"]
    return "\n".join(parts) + "\n"


if __name__ == "__main__":
    OUT.write_text(reference(), encoding="utf-8")
    print(f"wrote {OUT}")
