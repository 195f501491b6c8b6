"""The ``ccfv`` command line: ``rank``, ``layers``, ``demo``, ``evaluate``, ``bench``, ``bank``."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ccfv import __version__
from ccfv.errors import UserError

METHODS_HELP = (
    "estimators to compute, comma-separated; the first one ranks (default: ccfv, the "
    "paper's CC-FV with class Gaussians on the unit sphere; ccfv-paper: the paper's "
    "equations exactly; options in brackets, e.g. ccfv-paper[distance=kl])"
)


FAILURE_LOG = "failures.log"


#: Loggers whose messages are the run's own lines (printed on stdout, INFO and up): a note on
#: the data, one line per model, failures, warnings. Every other ``ccfv.*`` logger is printed
#: on stderr from WARNING up, as Python prints a library's warnings without a handler.
RUN_LOGGERS = ("ccfv.rank", "ccfv.backends", "ccfv.bench", "ccfv.select")


@contextmanager
def _messages() -> Iterator[None]:
    """While a command runs: the messages of :data:`RUN_LOGGERS` on stdout (INFO and up),
    the other ``ccfv.*`` loggers' warnings on stderr, each as its bare message. ``--quiet``
    turns off the progress bars only."""
    logger = logging.getLogger("ccfv")

    def handler(stream: Any, level: int, run: bool) -> logging.Handler:
        made = logging.StreamHandler(stream)
        made.setLevel(level)
        made.setFormatter(logging.Formatter("%(message)s"))
        made.addFilter(lambda record: record.name.startswith(RUN_LOGGERS) == run)
        return made

    handlers = [
        handler(sys.stdout, logging.INFO, True),
        handler(sys.stderr, logging.WARNING, False),
    ]
    level = logger.level
    for made in handlers:
        logger.addHandler(made)
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        for made in handlers:
            logger.removeHandler(made)
        logger.setLevel(level)


def _backend(args: argparse.Namespace) -> Any:
    """The feature backend of ``--backend``, ``--address`` and ``--retries``."""
    from ccfv.backends import LocalBackend, check_retries

    if args.address is not None and args.backend != "ray":
        raise UserError(
            f"--address {args.address} is for --backend ray: add --backend ray or drop --address"
        )
    if args.backend == "ray":
        from ccfv.backends.ray import RayBackend

        return RayBackend(address=args.address, retries=args.retries)
    check_retries(args.retries)
    return LocalBackend()


def _run_setup(args: argparse.Namespace) -> tuple[Any, Any]:
    """The settings and the backend of ``rank`` and ``demo``, every option checked before
    any work (the device by the backend, --out and --cache-dir writable)."""
    from ccfv.rank import RankSettings, check_folder

    backend = _backend(args)
    settings = RankSettings(
        methods=args.methods,
        cases=args.cases,
        seed=args.seed,
        device=args.device,
        cache_dir=args.cache_dir,
        budget=args.budget,
        autocast=args.autocast,
        bootstrap=args.bootstrap,
        progress=not args.quiet,
        failure_log=Path(args.out) / FAILURE_LOG,
    )
    backend.check_device(settings.device)
    check_folder(args.out, "--out")
    check_folder(args.cache_dir, "--cache-dir")
    return settings, backend


def _run_rank(
    bank: str | Path,
    data: str | Path,
    args: argparse.Namespace,
    settings: Any,
    backend: Any,
    title: str,
) -> int:
    from ccfv.rank import rank
    from ccfv.report import ranking_table, write_report

    failure_log = settings.failure_log
    failure_log.unlink(missing_ok=True)  # this run's failures only
    result = rank(bank, data, settings, backend=backend)
    details = result.details
    print()
    print(ranking_table(result.scores, result.methods, details.get("bootstrap")))
    if result.failures:
        details["failures"] = result.failures
    paths = write_report(args.out, result.scores, result.methods, details, title=title)
    print(f"\nwrote {paths['csv']}, {paths['json']}, {paths['md']} and {paths['png']}")
    method_failures = result.method_failures
    if result.failures or method_failures:
        if result.failures:
            print(
                f"{len(result.failures)} model(s) failed: {', '.join(result.failures)} "
                "(see the messages above and report.md)",
                file=sys.stderr,
            )
        for model, failed in method_failures.items():
            print(
                f"{model}: method(s) {', '.join(failed)} failed, its other scores stand "
                "(see report.md)",
                file=sys.stderr,
            )
        if failure_log.exists():
            print(f"tracebacks of the unexpected errors: {failure_log}", file=sys.stderr)
        return 1
    return 0


def _cmd_rank(args: argparse.Namespace) -> int:
    settings, backend = _run_setup(args)
    return _run_rank(
        args.bank, args.data, args, settings, backend, f"ccfv ranking on {Path(args.data).name}"
    )


def _cmd_demo(args: argparse.Namespace) -> int:
    from ccfv.demo import prepare

    settings, backend = _run_setup(args)
    print(
        "ccfv demo: ranking 7 small MONAI 3D networks (UNet, SegResNet), pre-trained on "
        "source tasks made from\nthe MNI152 template (brain mask, white matter, an intensity "
        "band) or not pre-trained at all, on a\ngrey/white-matter target of 8 template crops "
        "with simulated scanner variation. Offline.\n"
    )
    bank, data = prepare(Path(args.cache_dir) / "demo")
    return _run_rank(bank, data, args, settings, backend, "ccfv demo ranking")


def _shape(text: str) -> list[int]:
    try:
        shape = [int(v) for v in text.split(",")]
    except ValueError:
        shape = []
    if len(shape) not in (3, 4) or min(shape) < 1:
        raise UserError(
            f"--shape {text}: give the input shape without batch as positive "
            "integers C,X,Y (2D) or C,X,Y,Z (3D), e.g. --shape 1,96,96,96"
        )
    return shape


def _cmd_layers(args) -> int:
    from ccfv.bank import list_layers, load_bank, load_model, resolve_layers
    from ccfv.errors import first_line
    from ccfv.passes import window_hint

    shape_arg = _shape(args.shape) if args.shape else None
    entries = load_bank(args.bank)
    chosen = [e for e in entries if args.model in (None, e.name)]
    if not chosen:
        raise UserError(
            f"no model named {args.model!r} in {args.bank}: it holds "
            f"{', '.join(e.name for e in entries)}"
        )
    failed = []
    for entry in chosen:
        pre = entry.preprocessing
        if shape_arg:
            shape = shape_arg
        elif pre.roi:
            shape = [pre.in_channels or 1, *pre.roi]
        else:
            print(
                f"# {entry.name}: FAILED: no roi in its preprocessing; give the input shape "
                "with --shape C,X,Y[,Z]\n",
                file=sys.stderr,
            )
            failed.append(entry.name)
            continue
        model = None
        try:  # one model's failure is that model's failure
            model, _ = load_model(entry)
            infos = list_layers(model, [1, *shape])
        except Exception as error:  # noqa: BLE001
            text = (
                str(error)
                if isinstance(error, UserError)
                else (f"{type(error).__name__}: {first_line(error)}")
            )
            hint = (
                None
                if model is None or isinstance(error, UserError)
                else window_hint(entry, model, shape[0], shape[1:])
            )
            if hint:
                text = f"{hint} ({text})"
            print(
                f"# {entry.name}: FAILED for input (1, {', '.join(map(str, shape))}): {text}\n",
                file=sys.stderr,
            )
            failed.append(entry.name)
            continue
        print(
            f"# {entry.name}: modules and output shapes for input (1, {', '.join(map(str, shape))})"
        )
        for info in infos:
            shape_text = tuple(info.output_shape) if info.output_shape else ""
            print(f"{info.name:<50} {info.type_name:<28} {shape_text}")
        try:
            chosen_layers = resolve_layers(model, entry)
            print(f"# layers used: {', '.join(str(s) for s in chosen_layers)}\n")
        except UserError as error:
            print(f"# layers: {error}\n")
    if failed:
        print(
            f"{len(failed)} of {len(chosen)} model(s) failed: {', '.join(failed)}", file=sys.stderr
        )
        return 1
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from ccfv.errors import collect_ccfv_warnings
    from ccfv.evaluation import (
        evaluate,
        format_table,
        plot_scores_vs_truth,
        read_scores_csv,
        read_truth_csv,
        write_evaluation_csv,
    )
    from ccfv.rank import check_folder

    out = check_folder(args.out, "--out")
    scores = read_scores_csv(args.scores)
    truth = read_truth_csv(args.truth)
    methods = None
    if args.methods:
        methods = [m.strip() for m in args.methods.split(",") if m.strip()]
        if not methods:
            raise UserError("--methods names no method: give e.g. --methods ccfv,ccfv-official")
    with collect_ccfv_warnings() as caught:  # evaluate() says what matters in rows.warnings
        rows = evaluate(
            scores, truth, methods=methods, scores_name=str(args.scores), truth_name=str(args.truth)
        )
    for text in dict.fromkeys(caught):
        logging.getLogger(__name__).debug("estimator warning: %s", text)
    for message in rows.warnings:
        print(f"warning: {message}", file=sys.stderr)
    print(format_table(rows))
    for row in rows:
        for note in row["notes"]:
            print(f"  {row['method']}: {note}")
    csv_path = write_evaluation_csv(rows, out / "evaluation.csv")
    png_path = plot_scores_vs_truth(scores, truth, out / "evaluation.png", rows=rows)
    print(f"\nwrote {csv_path} and {png_path}")
    return 0


def _cmd_bench(args) -> int:
    from ccfv.bench.config import load_config
    from ccfv.bench.run import run_bench

    if args.combine:
        from ccfv.bench.report import combine_results

        out = Path(args.out or "bench-out")
        combine_results(args.combine, out)
        print(f"wrote {out / 'summary.json'} and {out / 'headline.md'}")
        print((out / "headline.md").read_text())
        return 0
    if not args.config:
        raise UserError("ccfv bench needs --config FILE (or --combine RESULTS... --out DIR)")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    config = load_config(args.config, quick=args.quick)
    if args.targets:
        config = config.only_targets(args.targets)
    work = Path(args.work or Path(".ccfv_bench") / config["name"])
    out = Path(args.out or Path("bench-out") / config["name"])
    print(
        f"ccfv bench: {config['name']} ({len(config.task_paths)} tasks, targets "
        f"{', '.join(config.targets)}); cache {work}, results {out}"
    )
    if args.convergence:
        from ccfv.bench.run import run_convergence

        run_convergence(config, work, out, progress=not args.quiet, device=args.device)
        print(f"\nwrote {out / 'convergence.json'} and the convergence_*.png plots")
        return 0
    run_bench(config, work, out, progress=not args.quiet, device=args.device)
    print(f"\nwrote {out / 'summary.json'}, {out / 'tables.md'} and the fig2_*.png plots")
    print((out / "tables.md").read_text().split("## Pearson")[0])
    return 0


def _cmd_bank_init(args) -> int:
    from ccfv.bank.init import scan_folders, write_bank

    out = Path(args.out).expanduser()
    if out.exists() and not args.force:
        raise UserError(f"{out} exists; give another --out or --force to overwrite it")
    loaded, skipped = scan_folders(args.folders, out)
    for cand in loaded:
        print(f"found  {cand.raw['name']:<40} {cand.source_format:<12} {cand.path}")
        for note in cand.notes:
            print(f"       note: {note}")
    if skipped:
        print(f"\nskipped {len(skipped)}:")
        for item in skipped:
            print(f"  {item.path}\n      {item.reason}")
    path = write_bank(out, loaded, skipped, args.folders, force=args.force)
    print(f"\nwrote {path} with {len(loaded)} model(s); check it with: ccfv bank check {path}")
    return 0


def _cmd_bank_check(args) -> int:
    from ccfv.bank.check import check_bank, format_check_table

    rows = check_bank(args.bank)
    print(format_check_table(rows))
    if args.data is not None:  # what each model's preprocessing does to one target case
        from ccfv.extract.geometry import check_bank_geometry, format_geometry_table

        print("\n" + format_geometry_table(check_bank_geometry(args.bank, args.data, args.case)))
    failed = [r.name for r in rows if not r.ok]
    if failed:
        print(
            f"\n{len(failed)} of {len(rows)} model(s) failed: {', '.join(failed)}", file=sys.stderr
        )
        return 1
    print(f"\nall {len(rows)} model(s) ok")
    return 0


def _add_run_options(p, out_default):
    p.add_argument("--methods", default="ccfv", help=METHODS_HELP)
    p.add_argument(
        "--cases",
        type=int,
        default=None,
        help="use N cases, picked reproducibly with --seed (default: all)",
    )
    p.add_argument(
        "--seed", type=int, default=0, help="seed of case selection and voxel sampling (default 0)"
    )
    p.add_argument(
        "--device",
        default=None,
        help="torch device: cpu, cuda, cuda:1 (default cpu; with --backend ray: "
        "one GPU per task when the cluster has GPUs, else cpu)",
    )
    p.add_argument("--autocast", action="store_true", help="mixed precision on CUDA")
    p.add_argument(
        "--budget",
        choices=["fixed", "proportional"],
        default="fixed",
        help="voxels per case and class: fixed 100/200/400 per layer (released "
        "code) or proportional to the class size (paper); default fixed",
    )
    p.add_argument(
        "--bootstrap",
        type=int,
        default=100,
        metavar="B",
        help="resample the target cases B times (from cached features, no model "
        "run) to give each model's interval of the first method and how often "
        "the top model stays first; 0 turns it off (default 100)",
    )
    p.add_argument(
        "--cache-dir",
        default=".ccfv_cache",
        help="feature cache; re-runs reuse it (default .ccfv_cache); with --backend "
        "ray a folder every node sees under the same path",
    )
    p.add_argument(
        "--backend",
        choices=["local", "ray"],
        default="local",
        help="where the feature passes run: local (here, one model after the "
        "other; default) or ray (one Ray task per model, on the cluster of "
        "--address, writing into --cache-dir; scoring, bootstrap and reports "
        "stay here). ray needs pip install 'ccfv[ray]', and the bank's files, "
        "--data and --cache-dir on paths every node sees",
    )
    p.add_argument(
        "--address",
        default=None,
        metavar="ADDR",
        help="with --backend ray: the Ray cluster to join, e.g. 10.0.0.5:6379 as "
        "printed by `ray start --head` (default: $RAY_ADDRESS, else a cluster "
        "started with `ray start` on this machine, else a new local one)",
    )
    p.add_argument(
        "--retries",
        type=int,
        default=3,
        metavar="N",
        help="with --backend ray: how many times Ray retries a task whose worker "
        "died (or that hit an I/O error) before its model counts as failed "
        "(default 3)",
    )
    p.add_argument(
        "--out",
        default=out_default,
        help=f"output folder for scores.csv/json, report.md (default {out_default})",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ccfv",
        description="Rank pre-trained segmentation models for fine-tuning on your labelled "
        "data, without fine-tuning them (CC-FV, MICCAI 2023).",
    )
    parser.add_argument("--version", action="version", version=f"ccfv {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser(
        "rank",
        help="score every model of a bank on a labelled dataset",
        description="Score every model of a bank file on a labelled target "
        "dataset and rank them; writes scores.csv, scores.json, "
        "report.md and scores.png.",
    )
    p.add_argument("--bank", required=True, help="model bank YAML file")
    p.add_argument(
        "--data",
        required=True,
        help="target dataset folder (Decathlon, nnU-Net v2 raw, or images/ + labels/ folders)",
    )
    _add_run_options(p, "ccfv-out")
    p.set_defaults(func=_cmd_rank)

    from ccfv.select.cli import add_parser as add_select_parser

    add_select_parser(sub)

    p = sub.add_parser(
        "demo",
        help="rank a built-in bank on built-in data, offline",
        description="Rank a built-in bank of small MONAI networks on a target "
        "made from the MNI152 template (inside nilearn), offline.",
    )
    _add_run_options(p, "ccfv-demo-out")
    p.set_defaults(func=_cmd_demo, methods="ccfv,ccfv-official")

    p = sub.add_parser(
        "layers",
        help="list a model's modules and output shapes",
        description="List the modules of bank models with their output shapes "
        "(one dummy forward), to choose layers to hook.",
    )
    p.add_argument("--bank", required=True, help="model bank YAML file")
    p.add_argument("--model", help="only this entry (default: all)")
    p.add_argument(
        "--shape",
        help="input shape without batch, C,X,Y[,Z] (default: in_channels and the entry's roi)",
    )
    p.set_defaults(func=_cmd_layers)

    p = sub.add_parser(
        "evaluate",
        help="measure how well scores predict fine-tuned Dice",
        description="Compare the scores of `ccfv rank` (scores.csv) with the Dice "
        "each model reached after fine-tuning (a CSV with columns "
        "model,dice): weighted Kendall tau, Kendall tau, Spearman, "
        "Pearson, top-1 relative Dice and regret per method; writes "
        "evaluation.csv and evaluation.png.",
    )
    p.add_argument("--scores", required=True, help="scores.csv written by `ccfv rank`")
    p.add_argument(
        "--truth",
        required=True,
        help="fine-tuned ground truth: CSV with columns model,dice (others ignored)",
    )
    p.add_argument(
        "--out",
        default="ccfv-eval",
        help="output folder for evaluation.csv and evaluation.png (default ccfv-eval)",
    )
    p.add_argument(
        "--methods",
        default=None,
        help="methods (columns of --scores) to evaluate, comma-separated (default: all)",
    )
    p.set_defaults(func=_cmd_evaluate)
    p = sub.add_parser(
        "bench",
        help="the transfer benchmark: does a score pick the model that fine-tunes best?",
        description="Leave one task out: pre-train every architecture on every "
        "other task (and keep one from scratch), fine-tune every bank "
        "model on the target (ground truth: test Dice over seeds), "
        "score every model with every method on the target's train "
        "split, and report weighted tau, Pearson, Spearman and top-1 "
        "regret per target and averaged. Every stage is cached in "
        "--work and resumes where a killed run stopped.",
    )
    p.add_argument("--config", help="benchmark YAML (e.g. benchmarks/transfer2d.yaml)")
    p.add_argument(
        "--combine",
        nargs="+",
        metavar="RESULTS",
        help="instead of running: merge the summary.json of these results folders "
        "(e.g. the 2D and the 3D track) into --out/summary.json and "
        "--out/headline.md",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="the config's small `quick` profile: the whole pipeline in minutes",
    )
    p.add_argument("--work", help="cache of every stage (default .ccfv_bench/NAME)")
    p.add_argument("--out", help="results folder (default bench-out/NAME)")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: torch's choice); 1 avoids the slowdown "
        "of several torch processes competing for the same cores",
    )
    p.add_argument(
        "--device",
        default="cpu",
        help="torch device for training and feature passes: cpu (default), cuda, "
        "cuda:1; GPU runs are cached apart from CPU runs",
    )
    p.add_argument(
        "--convergence",
        action="store_true",
        help="instead of the benchmark: the convergence study (validation Dice "
        "against fine-tuning steps for the scratch and one pre-trained model "
        "per target, the config's `convergence` budgets) that chooses "
        "finetune.steps; writes --out/convergence.json and plots",
    )
    p.add_argument(
        "--targets",
        nargs="+",
        metavar="TARGET",
        help="run and report only these targets of the config, space- or comma-separated "
        "(default: all of them); "
        "they share the cache with the full run, so a finished target can be reported "
        "while the others still train",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_bench)

    p = sub.add_parser(
        "bank",
        help="build a bank from folders (init) or check one (check)",
        description="Build a model bank file from folders of models, or check "
        "that every model of a bank loads and runs.",
    )
    bank_sub = p.add_subparsers(dest="bank_command", metavar="BANK_COMMAND", required=True)
    q = bank_sub.add_parser(
        "init",
        help="scan folders for models and write a bank file",
        description="Scan folders recursively for nnU-Net v2 result folders (one entry per "
        "fold), MONAI bundles (configs/inference.json + models/model.pt) and "
        "TorchScript files; write those that load to a commented bank YAML and "
        "list what was skipped and why (a bare state dict does not say its "
        "architecture: write its network/args entry by hand).",
    )
    q.add_argument("folders", nargs="+", metavar="DIR", help="folders (or files) to scan")
    q.add_argument("--out", required=True, help="bank YAML file to write")
    q.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    q.set_defaults(func=_cmd_bank_init)
    q = bank_sub.add_parser(
        "check",
        help="load every model of a bank and run one dummy window",
        description="Load every entry of a bank, run one zero window (1, in_channels, *roi) "
        "through it and print a table: name, format, parameters, layers and their "
        "output shapes, preprocessing, status. Exit code 1 if any entry fails. "
        "With --data, also run each entry's preprocessing on one target case and "
        "print its input and preprocessed shape and spacing, the share of the "
        "planned voxels inside the preprocessed image, and warnings (a spacing "
        "changed more than 3x on some axis, planned voxels cropped away).",
    )
    q.add_argument("bank", help="model bank YAML file")
    q.add_argument(
        "--data",
        metavar="DIR",
        default=None,
        help="target dataset folder: show what each model's preprocessing does to one of its cases",
    )
    q.add_argument(
        "--case",
        metavar="ID",
        default=None,
        help="with --data: the case to use (default: the dataset's first case)",
    )
    q.set_defaults(func=_cmd_bank_check)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        with _messages():
            return int(args.func(args))
    except UserError as error:
        print(f"ccfv {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as interrupt:
        from ccfv.rank import Interrupted

        if isinstance(interrupt, Interrupted):
            text = str(interrupt)
        elif getattr(args, "cache_dir", None) and args.command in ("rank", "demo"):
            text = (
                f"features computed so far are kept in the cache "
                f"{Path(args.cache_dir).resolve()}; the same command resumes from there"
            )
        else:
            text = "nothing was written"
        print(f"\nccfv {args.command}: interrupted (Ctrl-C): {text}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
