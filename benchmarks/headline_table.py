"""The README's benchmark tables, printed from a benchmark ``summary.json`` (issue 13, item 4:
every number of the README's results section produced from the results).

Three tables, each one markdown block::

    python benchmarks/headline_table.py estimators SUMMARY [--methods M,M,...] [--per-target]
    python benchmarks/headline_table.py reliability SUMMARY
    python benchmarks/headline_table.py select SUMMARY
    python benchmarks/headline_table.py update PAGE.md [PAGE.md ...]

``estimators``: per method, the weighted Kendall tau averaged over the headline's reliable
targets (split-half Spearman >= 0.8), on how many of them its 95% interval lies above 0, the
weighted tau within one architecture (averaged over the architectures and the reliable
targets), the top-3 recall; the paired difference from the best baseline (the pre-registered
rule's b*: the highest mean weighted tau, ties within 0.01 to the higher within-architecture
tau), for the summary's reference method (the default), as a line below the table.
``--per-target`` adds one column per reliable target (value and 95% interval).
``reliability``: per target, the split-half Spearman and weighted tau of the fine-tuned Dice,
the Dice range of the bank, the mean seed sd, the median gap between adjacent models, the noise
ceiling of weighted tau and the size of the best group.
``select``: ``ccfv select`` replayed on the fine-tuning runs (training-free top-1, K = 3 and 5 at
1x and 2x the fine-tuning budget, fine-tuning everything): per reliable target the pick's
regret with its 95% interval, the best-group hits over the targets' seeds and the compute as a
fraction of fine-tuning every model (seconds, the scoring included).

``update``: rewrites, in place, every table a page carries under a
``<!-- headline_table.py ARGS -->`` comment (up to ``<!-- /headline_table.py -->``) with what
``ARGS`` print, run from the repository root.

``tests/test_docs.py`` checks that each table the README and ``benchmarks/results/v2/README.md``
carry under a ``<!-- headline_table.py ... -->`` comment is what this script prints, so the
tables cannot drift from the committed summary.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import sys
from pathlib import Path

# the baselines of the pre-registered rule: the best of them is the paired reference
sys.path.insert(0, str(Path(__file__).resolve().parent))
from apply_default_rule import BASELINES, pick_best_baseline  # noqa: E402

from ccfv.errors import UserError  # noqa: E402

#: Rows of the README's table unless --methods says otherwise.
DEFAULT_METHODS = ["ccfv", "ccfv-paper", "logme", "gbc", "nleep", "ccfv-hscore", "ccfv-null"]
#: Labels added after a method's name.
LABELS = {
    "ccfv": " (default)",
    "ccfv-hscore": " (candidate)",
    "ccfv-null": " (candidate)",
    "ccfv-pca": " (candidate)",
    "ccfv-pca[whiten=true]": " (candidate)",
}


def _row(cells: list[str]) -> str:
    """One markdown table row."""
    return "| " + " | ".join(cells) + " |"


def _head(cols: list[str]) -> list[str]:
    """A markdown table's header row and its rule."""
    return [_row(cols), "|" + "---|" * len(cols)]


def _f(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _iv(entry: dict) -> str:
    if entry.get("interval") is None:
        return f"{_f(entry.get('value'))} [n/a]"
    lo, hi = entry["interval"]
    return f"{_f(entry['value'])} [{_f(lo)}, {_f(hi)}]"


def _reliability(summary: dict, path: str) -> dict:
    try:
        return summary["statistics"]["reliability"]
    except KeyError:
        raise SystemExit(
            f"{path}: no statistics.reliability: give the summary.json of a protocol-v2 "
            "`ccfv bench` run (>= 4 seeds)"
        ) from None


def best_baseline(summary: dict, path: str = "summary.json") -> str:
    """The rule's best baseline b* (``apply_default_rule.pick_best_baseline``: the highest mean
    weighted tau over the reliable targets, ties within 0.01 to the higher within-architecture
    tau), from the summary's headline figures."""
    estimators = _reliability(summary, path)["headline"]["estimators"]
    within = summary["statistics"]["within_architecture"]["average"]
    figures = {
        m: {
            "weighted_tau": estimators[m]["weighted_tau"],
            "within_architecture_tau": (within.get(m) or {}).get("weighted_tau"),
        }
        for m in BASELINES
        if m in estimators
    }
    try:
        return pick_best_baseline(figures, BASELINES)
    except UserError as err:
        raise SystemExit(f"{path}: {err}") from None


def estimators_table(summary: dict, methods: list[str], per_target: bool, path: str) -> str:
    rel = _reliability(summary, path)
    head = rel["headline"]
    reliable = head["reliable"]
    if not reliable:
        raise SystemExit(f"{path}: no target reaches split-half Spearman {head['threshold']}")
    missing = [m for m in methods if m not in head["estimators"]]
    if missing:
        raise SystemExit(
            f"{path}: methods {missing} were not scored; scored: {', '.join(head['estimators'])}"
        )
    ref = best_baseline(summary, path)
    within = summary["statistics"]["within_architecture"]["average"]
    cols = ["method"]
    if per_target:
        cols += [summary["config"].get("labels", {}).get(t, t) for t in reliable]
    cols += ["mean weighted tau", "interval above 0", "within one architecture", "top-3 recall"]
    lines = _head(cols)
    for m in methods:
        est = head["estimators"][m]
        per = [rel["per_target"][t]["estimators"][m]["weighted_tau"] for t in reliable]
        above = sum(e["interval"][0] > 0 for e in per)
        recall = est["top3_recall"]
        row = [f"`{m}`{LABELS.get(m, '')}"]
        if per_target:
            row += [_iv(e) for e in per]
        row += [
            _f(est["weighted_tau"], 3),
            f"{above}/{len(reliable)}",
            _f((within.get(m) or {}).get("weighted_tau"), 3),
            f"{round(recall['rate'] * recall['n'])}/{recall['n']}",
        ]
        lines.append(_row(row))
    # the paired comparison of the summary: its reference method minus each other method
    default, paired = rel["paired"]["reference"], rel["paired"]["versus"]
    if ref in paired:
        across = paired[ref]["across_reliable"]["weighted_tau"]
        per = paired[ref]["per_target"]
        lines += [
            "",
            f"Paired with `{ref}` (the best baseline) on the same replicates, `{default}` "
            f"differs by {across['mean']:+.3f} in weighted tau on average, positive on "
            f"{across['positive']} of {across['n']} reliable targets (sign test p = "
            f"{across['sign_test_p']:.2g}); per target: "
            + "; ".join(
                f"{t} {per[t]['weighted_tau']['difference']:+.2f} ["
                f"{per[t]['weighted_tau']['interval'][0]:+.2f}, "
                f"{per[t]['weighted_tau']['interval'][1]:+.2f}]"
                for t in reliable
                if t in per
            )
            + ".",
        ]
    return "\n".join(lines)


def reliability_table(summary: dict, path: str) -> str:
    rel = _reliability(summary, path)
    cols = [
        "target",
        "split-half Spearman",
        "split-half weighted tau",
        "Dice of the bank",
        "seed sd (mean)",
        "median gap",
        "noise ceiling, weighted tau",
        "best group",
        "headline",
    ]
    lines = _head(cols)
    reliable = set(rel["headline"]["reliable"])
    for target, entry in rel["per_target"].items():
        r, noise = entry["reliability"], entry["noise"]
        lo, hi = noise["dice_range"]
        group = entry["best_group"]["group"]
        lines.append(
            _row(
                [
                    target,
                    _f(r["spearman"]),
                    _f(r["weighted_tau"]),
                    f"{lo:.2f}-{hi:.2f}",
                    _f(noise["mean_seed_sd"], 3),
                    _f(noise["median_gap"], 3),
                    _f(entry["noise_ceiling"]["weighted_tau"]["mean"]),
                    f"{len(group)} model{'s' if len(group) != 1 else ''}",
                    "yes" if target in reliable else "no: too noisy",
                ]
            )
        )
    return "\n".join(lines)


#: Rows of the select table: (label, method, K, budget multiple).
SELECT_ROWS = [
    ("training-free top-1 (`{estimator}`)", "training-free top-1", None, None),
    ("select K=3, B=1x", "select", 3, 1),
    ("select K=5, B=1x", "select", 5, 1),
    ("select K=5, B=2x", "select", 5, 2),
    ("fine-tune everything, pick by validation", "fine-tune everything", None, None),
]


def select_table(summary: dict, path: str) -> str:
    """`ccfv select` replayed on the runs: per reliable target the pick's regret [95% CI], the
    best-group hits over the reliable targets' seeds, and the compute as a fraction of the
    seconds of fine-tuning the whole bank (scoring included), averaged over the targets."""
    select = summary.get("select")
    if not select:
        raise SystemExit(f"{path}: no select section: give a summary.json of `ccfv bench` (v2)")
    reliable = select["headline"]["reliable"]
    cols = ["", *(f"{t} regret [95% CI]" for t in reliable), "best-group hits", "compute"]
    lines = _head(cols)
    for label, method, top, multiple in SELECT_ROWS:
        cells, hits, n, fractions = [], 0, 0, []
        for t in reliable:
            rows = [
                r
                for r in select["per_target"][t]["rows"]
                if r["method"] == method
                and (top is None or (r["top"], r["multiple"]) == (top, multiple))
            ]
            if not rows:
                cells.append("not run")
                continue
            row = rows[0]
            lo, hi = row["regret"]["interval"]
            cells.append(f"{row['regret']['value']:.3f} [{lo:.3f}, {hi:.3f}]")
            hits += sum(bool(h) for h in row["hit_trials"])
            n += len(row["hit_trials"])
            fractions.append(row["compute"]["fraction_seconds"])
        name = label.format(estimator=select["estimator"])
        compute = f"{sum(fractions) / len(fractions):.3f}" if fractions else "n/a"
        lines.append(_row([name, *cells, f"{hits}/{n}", compute]))
    return "\n".join(lines)


def render(argv: list[str]) -> str:
    """The table that ``headline_table.py ARGV`` prints (``ARGV``: table, summary, options)."""
    parser = argparse.ArgumentParser(prog="headline_table.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("table", choices=["estimators", "reliability", "select"])
    parser.add_argument("summary", help="summary.json of a `ccfv bench` run")
    parser.add_argument(
        "--methods",
        default=",".join(DEFAULT_METHODS),
        help="comma-separated rows of the estimators table",
    )
    parser.add_argument(
        "--per-target",
        action="store_true",
        help="one column per reliable target (estimators table)",
    )
    args = parser.parse_args(argv)
    path = Path(args.summary)
    if not path.is_file():
        raise SystemExit(f"{path}: no such file: give the summary.json of a `ccfv bench` run")
    try:
        summary = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise SystemExit(
            f"{path}: not JSON ({error}): give a summary.json of `ccfv bench`"
        ) from None
    if args.table == "estimators":
        methods = [m.strip() for m in args.methods.split(",") if m.strip()]
        return estimators_table(summary, methods, args.per_target, str(path))
    if args.table == "select":
        return select_table(summary, str(path))
    return reliability_table(summary, str(path))


#: A generated table in a markdown page: the comment with its arguments, the table, the end.
GENERATED = re.compile(
    r"(<!-- headline_table\.py (.+?) -->\n)(.*?)(\n<!-- /headline_table\.py -->)", re.S
)


def update(pages: list[str]) -> list[str]:
    """Rewrite every generated table of ``pages`` in place from its own arguments (paths in
    them relative to the working directory, as ``tests/test_docs.py`` runs them from the
    repository root); returns the pages that changed."""
    changed = []
    for name in pages:
        page = Path(name)
        if not page.is_file():
            raise SystemExit(f"{page}: no such file: give a markdown page with generated tables")
        text = page.read_text()
        if not GENERATED.search(text):
            raise SystemExit(f"{page}: no `<!-- headline_table.py ... -->` table in it")
        new = GENERATED.sub(
            lambda m: m.group(1) + render(shlex.split(m.group(2))) + m.group(4), text
        )
        if new != text:
            page.write_text(new)
            changed.append(name)
    return changed


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["update"]:
        if len(argv) < 2:
            raise SystemExit("usage: headline_table.py update PAGE.md [PAGE.md ...]")
        for page in update(argv[1:]):
            print(f"updated {page}")
        return 0
    print(render(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
