"""The ``ccfv select`` subcommand: its parser and its handler."""

from __future__ import annotations

import argparse

__all__ = ["add_parser"]


def _cmd_select(args) -> int:
    from ccfv.select.run import SelectSettings, select

    settings = SelectSettings(
        top=args.top,
        budget=args.budget,
        device=args.device,
        cases=args.cases,
        seed=args.seed,
        val_fraction=args.val_fraction,
        group=args.group,
        lr=args.lr,
        batch_size=args.batch_size,
        save_every=args.save_every,
        schedule_steps=args.schedule_steps,
        cache_dir=args.cache_dir,
        progress=not args.quiet,
    )
    from ccfv.rank import Interrupted

    try:
        result = select(args.bank, args.data, settings, args.out)
    except Interrupted:
        raise
    except KeyboardInterrupt:
        raise Interrupted(
            f"every candidate's training state saved so far is kept under "
            f"{settings.cache_dir}/select; the same command resumes there"
        ) from None
    print(
        f"wrote {args.out}/selection.json, report.md, curves.png and "
        f"winner/ ({result['winner']['model']})"
    )
    return 0


def add_parser(sub) -> argparse.ArgumentParser:
    """Add ``select`` to the subcommands ``sub`` of the ``ccfv`` parser."""
    p = sub.add_parser(
        "select",
        help="rank a bank, then fine-tune the top candidates briefly and pick one",
        description="Rank every model of a bank training-free (as `ccfv rank`, same cache), "
        "then fine-tune the top K on a train split of the target with successive "
        "halving (each candidate a small budget, the better half by validation "
        "Dice goes on with twice the steps) and hand over the winner's weights. "
        "Writes selection.json, report.md, curves.png and winner/.",
    )
    p.add_argument("--bank", required=True, help="model bank YAML file")
    p.add_argument(
        "--data",
        required=True,
        help="target dataset folder (Decathlon, nnU-Net v2 raw, or images/ + labels/ folders)",
    )
    p.add_argument(
        "--top",
        type=int,
        default=3,
        metavar="K",
        help="candidates to fine-tune: the K best by the training-free ranking (default 3)",
    )
    p.add_argument(
        "--budget",
        default="1500",
        metavar="STEPS|TIME",
        help="fine-tuning budget over all candidates: training steps (e.g. 1500, "
        "the default) or a time (e.g. 90s, 20m, 1h30m: converted once to "
        "steps from the measured seconds per step, 80%% of it for training)",
    )
    p.add_argument(
        "--device",
        default="cpu",
        help="torch device (cpu, cuda, cuda:N); on CUDA training and validation "
        "run with automatic mixed precision (default cpu)",
    )
    p.add_argument(
        "--cases",
        type=int,
        default=None,
        metavar="N",
        help="use N cases of the target, picked with --seed (default: all)",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seeds the ranking, the split, the patches and the training (default 0)",
    )
    p.add_argument(
        "--val-fraction",
        type=float,
        default=0.2,
        metavar="F",
        help="fraction of the target's patients held out for validation (at least "
        "one; default 0.2)",
    )
    p.add_argument(
        "--group",
        default=None,
        metavar="REGEX",
        help="regular expression whose first group is a case id's patient, so that "
        "no patient is on both sides of the split (default: ids like "
        "patient001_frame01_slice02 by patient, else one patient per case)",
    )
    p.add_argument("--lr", type=float, default=1e-3, help="Adam's learning rate (default 1e-3)")
    p.add_argument(
        "--batch-size",
        type=int,
        default=2,
        metavar="B",
        help="patches per training step (default 2)",
    )
    p.add_argument(
        "--schedule-steps",
        type=int,
        default=None,
        metavar="N",
        help="length of the learning-rate schedule (polynomial decay) of every candidate "
        "(default: the last rung's end). With a full fine-tune's length, each candidate runs "
        "that fine-tune's schedule and stops at its rung ends, as `ccfv bench` replays "
        "select from its fine-tuning runs; at least the last rung's end",
    )
    p.add_argument(
        "--save-every",
        type=int,
        default=50,
        metavar="N",
        help="save each candidate's training state every N steps, so a killed "
        "select resumes there (default 50)",
    )
    p.add_argument(
        "--cache-dir",
        default=".ccfv_cache",
        help="feature cache of the ranking (shared with `ccfv rank`) and the "
        "candidates' saved runs under select/ (default .ccfv_cache)",
    )
    p.add_argument("--out", default="ccfv-select", help="output folder (default ccfv-select)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_select)
    return p
