"""The docs stay true to the command line and to the repository.

Every ``ccfv ...`` command that the README, ``docs/`` or ``benchmarks/results/README.md`` show
(in code blocks, and in inline code that starts with ``ccfv``) must name existing commands and
flags of the parser that ``ccfv --help`` prints; every ``--flag`` shown on its own must belong to
some command; ``docs/reference/cli.md`` must list every flag of every command; every relative
link must point at an existing file (and an existing heading, for ``file.md#anchor``); the
README stays short.
"""

import argparse
import importlib.util
import re
import shlex
from pathlib import Path

import pytest

from ccfv.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted(
    [
        ROOT / "README.md",
        ROOT / "benchmarks" / "results" / "README.md",
        *(ROOT / "docs").rglob("*.md"),
    ]
)
#: Pages that docs/README.md links to and that other branches of this redesign are writing.
#: A link to one of them is checked once it exists; until then it is the only link allowed to
#: point at a missing file.
PENDING: set[str] = set()  # pages written on another branch, skipped until merged

FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.S | re.M)
INLINE = re.compile(r"(?<!`)`([^`\n]+)`(?!`)")
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
FLAG = re.compile(r"(?<![\w-])(--[a-z][a-z0-9-]*)")


def _subparsers(parser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices
    return {}


def _flags(parser):
    return {s for action in parser._actions for s in action.option_strings}


def _all_parsers(parser=None, path=("ccfv",)):
    parser = parser or build_parser()
    yield " ".join(path), parser
    for name, sub in _subparsers(parser).items():
        yield from _all_parsers(sub, (*path, name))


ALL_FLAGS = set().union(*(_flags(p) for _, p in _all_parsers()))


def _text(page):
    return page.read_text(encoding="utf-8")


def _commands(page):
    """(where, command line) for every ``ccfv ...`` the page shows."""
    text = _text(page)
    for block in FENCE.findall(text):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = line.split(" #", 1)[0].strip()
            match = re.search(r"(?:^|[;&|]\s*|^(?:[A-Z_]+=\S+\s+)+)(ccfv\s.*|ccfv$)", line)
            if match:
                yield f"{page.relative_to(ROOT)} (code block)", match.group(1)
    prose = FENCE.sub("", text)
    for span in INLINE.findall(prose):
        if span == "ccfv" or span.startswith("ccfv "):
            yield f"{page.relative_to(ROOT)} (inline)", span


def _check_command(line):
    """None if the command line names an existing command and only its flags, else why not."""
    try:
        tokens = shlex.split(line)
    except ValueError:
        tokens = line.split()
    parser, path = build_parser(), ["ccfv"]
    for token in tokens[1:]:
        if token.startswith("-"):
            flag = token.split("=", 1)[0]
            if flag.startswith("--") and flag not in _flags(parser):
                return f"{' '.join(path)} has no flag {flag}"
            continue
        subs = _subparsers(parser)
        if subs and token not in subs:
            return f"{' '.join(path)} has no command {token!r} (commands: {', '.join(subs)})"
        if subs:
            parser = subs[token]
            path.append(token)
    return None


COMMANDS = [(where, line) for page in PAGES for where, line in _commands(page)]


def test_the_docs_show_commands():
    shown = {tuple(line.split()[:2]) for _, line in COMMANDS}
    for command in ["rank", "demo", "layers", "evaluate", "bench", "bank"]:
        assert ("ccfv", command) in shown, f"no page shows ccfv {command}"


@pytest.mark.parametrize("where, line", COMMANDS, ids=[f"{w}: {c}" for w, c in COMMANDS])
def test_commands_and_flags_exist(where, line):
    problem = _check_command(line)
    assert problem is None, f"{where}: `{line}`: {problem}"


def test_the_checker_catches_unknown_commands_and_flags():
    assert _check_command("ccfv rank --bank b.yaml --data d --bootstrap 0") is None
    assert _check_command('ccfv rank --methods "ccfv,ccfv-paper[distance=kl]"') is None
    assert _check_command("ccfv bank check bank.yaml") is None
    assert "no flag --boostrap" in _check_command("ccfv rank --boostrap 0")
    assert "no command 'rnak'" in _check_command("ccfv rnak --bank b.yaml")
    assert "no flag --force" in _check_command("ccfv bank check --force bank.yaml")
    assert "no command 'inti'" in _check_command("ccfv bank inti x --out b.yaml")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_flag_shown_belongs_to_a_command(page):
    """A ``--flag`` in inline code (outside a command of another tool) is a ccfv flag."""
    prose = FENCE.sub("", _text(page))
    unknown = set()
    for span in INLINE.findall(prose):
        first = span.split()[0] if span.split() else ""
        if not first.startswith("--"):
            continue  # a ccfv command (checked above), or another tool's (pip, ray, python)
        unknown |= set(FLAG.findall(span)) - ALL_FLAGS
    assert not unknown, f"{page.relative_to(ROOT)} shows flags no ccfv command has: {unknown}"


def test_cli_reference_is_what_the_parser_says():
    """docs/reference/cli.md is the output of scripts/cli_reference.py for today's parser."""
    spec = importlib.util.spec_from_file_location(
        "cli_reference", ROOT / "scripts" / "cli_reference.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    page = ROOT / "docs" / "reference" / "cli.md"
    assert _text(page) == module.render(build_parser()), (
        "docs/reference/cli.md is out of date: run python scripts/cli_reference.py"
    )


def test_cli_reference_lists_every_flag():
    text = _text(ROOT / "docs" / "reference" / "cli.md")
    sections = dict(re.findall(r"^## `(ccfv[^`]*)`\n(.*?)(?=^## |\Z)", text, re.S | re.M))
    for path, parser in _all_parsers():
        if _subparsers(parser) or path == "ccfv":
            continue  # groups of commands: their commands have the sections
        assert path in sections, f"docs/reference/cli.md has no section for {path}"
        missing = {
            f
            for f in _flags(parser)
            if f.startswith("--") and f != "--help" and f"`{f}" not in sections[path]
        }
        assert not missing, f"docs/reference/cli.md, {path}: flags not listed: {missing}"


def _slug(heading):
    """GitHub's anchor of a Markdown heading."""
    text = heading.strip().lower().replace("`", "")
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(page):
    prose = FENCE.sub("", _text(page))
    return {_slug(h) for h in re.findall(r"^#+\s+(.*)$", prose, re.M)}


LINKS = [
    (page, target)
    for page in PAGES
    for target in LINK.findall(FENCE.sub("", _text(page)))
    if not re.match(r"^[a-z]+:", target)
]


@pytest.mark.parametrize(
    "page, target", LINKS, ids=[f"{p.relative_to(ROOT)} -> {t}" for p, t in LINKS]
)
def test_relative_links_resolve(page, target):
    path, _, anchor = target.partition("#")
    file = (page.parent / path).resolve() if path else page
    relative = file.relative_to(ROOT).as_posix() if file.is_relative_to(ROOT) else str(file)
    if relative in PENDING and not file.exists():
        pytest.skip(f"{relative} is written on another branch of this redesign")
    assert file.exists(), f"{page.relative_to(ROOT)}: link {target!r}: no file {relative}"
    if anchor and file.suffix == ".md":
        assert anchor in _anchors(file), (
            f"{page.relative_to(ROOT)}: link {target!r}: no "
            f"heading with anchor #{anchor} in {relative}"
        )


def test_readme_is_short():
    size = len((ROOT / "README.md").read_bytes())
    assert size < 12_000, f"README.md is {size} bytes: move detail into docs/"


GENERATED_PAGES = [ROOT / "README.md", ROOT / "benchmarks" / "results" / "v2" / "README.md"]


def _headline_table():
    spec = importlib.util.spec_from_file_location(
        "headline_table", ROOT / "benchmarks" / "headline_table.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _generated_tables():
    """``(page, ARGS, table)`` for each table under ``<!-- headline_table.py ARGS -->`` (the
    script's own pattern, the one its ``update`` rewrites)."""
    pattern = _headline_table().GENERATED
    return [
        (page, m.group(2), m.group(3))
        for page in GENERATED_PAGES
        for m in pattern.finditer(page.read_text())
    ]


def test_the_readme_carries_generated_tables():
    pages = {page for page, _, _ in _generated_tables()}
    assert pages == set(GENERATED_PAGES), "a results page lost its generated benchmark tables"


@pytest.mark.parametrize(
    "page, args, table",
    _generated_tables(),
    ids=lambda v: v.name if isinstance(v, Path) else str(v)[:40],
)
def test_generated_tables_are_what_the_summary_says(page, args, table, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    _headline_table().main(shlex.split(args))
    printed = capsys.readouterr().out.strip()
    assert table.strip() == printed, (
        f"{page.relative_to(ROOT)}: the table under `headline_table.py {args}` is not what the "
        f"summary gives; run `python benchmarks/headline_table.py update "
        f"{page.relative_to(ROOT)}`"
    )


def test_update_rewrites_a_stale_table_in_place(tmp_path, monkeypatch):
    """``headline_table.py update`` puts back what the summary says, and only under a marker."""
    monkeypatch.chdir(ROOT)
    page = tmp_path / "page.md"
    original = (ROOT / "benchmarks/results/v2/README.md").read_text()
    page.write_text(original.replace("| `nleep` | 0.", "| `nleep` | 9.", 1))
    assert page.read_text() != original
    ht = _headline_table()
    assert ht.update([str(page)]) == [str(page)]
    assert page.read_text() == original
    assert ht.update([str(page)]) == []  # nothing stale: the page is left alone
    (tmp_path / "plain.md").write_text("# no tables\n")
    with pytest.raises(SystemExit, match="no `<!-- headline_table.py"):
        ht.main(["update", str(tmp_path / "plain.md")])


def test_a_stale_table_is_caught(tmp_path, capsys, monkeypatch):
    """The check above can fail: one changed figure in a copy of the summary changes the table."""
    import json

    monkeypatch.chdir(ROOT)
    source = ROOT / "benchmarks/results/v2/transfer2d-v2/interim-2026-12-02/summary.json"
    summary = json.loads(source.read_text())
    ht = _headline_table()
    ht.main(["estimators", str(source)])
    before = capsys.readouterr().out
    summary["statistics"]["reliability"]["headline"]["estimators"]["ccfv"]["weighted_tau"] += 0.5
    changed = tmp_path / "summary.json"
    changed.write_text(json.dumps(summary))
    ht.main(["estimators", str(changed)])
    assert capsys.readouterr().out != before


@pytest.mark.parametrize("interim", ["interim", "interim-2026-12-02"])
def test_the_tables_best_baseline_is_the_rules(interim):
    """The README's paired line compares with the rule's b*, read from the same interim run."""
    import json

    interim = ROOT / "benchmarks/results/v2/transfer2d-v2" / interim
    rule = json.loads((interim / "default-rule/default_rule.json").read_text())
    summary = json.loads((interim / "summary.json").read_text())
    assert _headline_table().best_baseline(summary) == rule["best_baseline"]
