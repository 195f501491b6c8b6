"""The ``ccfv`` command line."""

from __future__ import annotations

import argparse
import sys
import warnings

from ccfv import __version__
from ccfv.errors import CCFVWarning, UserError


def _cmd_demo(args) -> int:
    from ccfv.estimators.ccfv import ccfv_parts
    from ccfv.synthetic import BANK, simulated_features

    print("ccfv demo: scoring a simulated bank of 5 models on 12 target cases "
          "(synthetic voxel features, 2 foreground classes, 3 decoder layers)\n")
    rows = []
    for name, (drift, collapse) in BANK.items():
        features = simulated_features(drift, collapse, seed=args.seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", CCFVWarning)
            paper = ccfv_parts(features, "paper")
            official = ccfv_parts(features, "official")
        rows.append((name, drift, collapse, paper, official))
    rows.sort(key=lambda row: row[3].score, reverse=True)
    header = f"{'rank':>4}  {'model':<22}{'drift':>6}{'collapse':>9}{'ccfv':>9}" \
             f"{'ccfv-official':>15}   per-layer F_v / C_cons (paper)"
    print(header)
    print("-" * len(header))
    for rank, (name, drift, collapse, paper, official) in enumerate(rows, 1):
        layers = "  ".join(f"{p.variety:.3f}/{p.consistency:.2f}" for p in paper.layers)
        print(f"{rank:>4}  {name:<22}{drift:>6.1f}{collapse:>9.2f}{paper.score:>9.3f}"
              f"{official.score:>15.3f}   {layers}")
    print("\nLarger = better starting point for fine-tuning. drift = how far each class's "
          "features move between cases\n(less class consistency); collapse = how few feature "
          "directions a model uses (less variety).")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ccfv",
        description="Rank pre-trained segmentation models for fine-tuning on your labelled "
                    "data, without fine-tuning them (CC-FV, MICCAI 2023).")
    parser.add_argument("--version", action="version", version=f"ccfv {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = sub.add_parser("demo", help="score a built-in example bank, offline",
                          description="Score a built-in example model bank, offline.")
    demo.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    demo.set_defaults(func=_cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return args.func(args)
    except UserError as error:
        print(f"ccfv {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
