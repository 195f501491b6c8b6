"""Write docs/reference/cli.md from the CLI's own parser, so the page is what `--help` says.

Usage: python scripts/cli_reference.py [--check]

``--check`` writes nothing and exits 1 when the page differs from what the parser gives
(tests/test_docs.py runs the same comparison).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

PAGE = Path(__file__).resolve().parents[1] / "docs" / "reference" / "cli.md"

INTRO = """\
# Reference: the `ccfv` command line

Every command and flag, as the `--help` of each command prints them. This page is written by
`python scripts/cli_reference.py` from the parser itself, and `tests/test_docs.py` checks that
it is up to date and that every flag shown anywhere in the docs exists. `ccfv --version` prints
the version; `ccfv --help` lists the commands. A user error (a bad file, flag or value) is
printed as one message without a traceback, with exit code 2; a failed model makes
`ccfv rank` / `ccfv demo` exit with code 1 after the others are scored.
"""


def _subcommands(parser: argparse.ArgumentParser) -> dict:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _commands(parser, path=("ccfv",)):
    """(command path, parser) of every leaf command, in the parser's order."""
    subs = _subcommands(parser)
    if not subs and len(path) > 1:
        yield " ".join(path), parser
    for name, sub in subs.items():
        yield from _commands(sub, (*path, name))


def _flag(action: argparse.Action, formatter: argparse.HelpFormatter) -> str:
    if not action.option_strings:  # a positional argument
        return formatter._format_args(action, action.metavar or action.dest)
    if action.nargs == 0:
        return ", ".join(action.option_strings)
    args = formatter._format_args(action, formatter._get_default_metavar_for_optional(action))
    return ", ".join(f"{option} {args}" for option in action.option_strings)


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def render(parser: argparse.ArgumentParser) -> str:
    out = [INTRO.rstrip("\n")]
    for path, sub in _commands(parser):
        formatter = sub._get_formatter()
        out.append(
            f"\n## `{path}`\n\n{_cell(sub.description or '')}\n\n"
            "| flag | | meaning |\n|---|---|---|"
        )
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction) or action.help == argparse.SUPPRESS:
                continue
            required = "required" if action.option_strings and action.required else ""
            out.append(
                f"| `{_flag(action, formatter)}` | {required} | {_cell(action.help or '')} |"
            )
    return "\n".join(out) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare only, write nothing")
    args = parser.parse_args()
    sys.path.insert(0, str(PAGE.parents[2] / "src"))
    from ccfv.cli import build_parser

    text = render(build_parser())
    if args.check:
        if PAGE.read_text(encoding="utf-8") != text:
            print(f"{PAGE}: out of date; run python scripts/cli_reference.py", file=sys.stderr)
            return 1
        return 0
    PAGE.write_text(text, encoding="utf-8")
    print(f"wrote {PAGE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
