"""What in CC-FV depends on the architecture rather than on the target (issue 16, item 1).

For every model of a bank, on the labelled cases of one target folder, this script reads the
sampled features once (through ``ccfv.rank``, so with the package's own sampling plan and
feature cache) and reports, per hooked layer:

- the channels, the samples, the hooked map's native spatial size against the label grid (the
  network input: the features of a coarser map are interpolated to the sampled voxels);
- the effective rank ``exp(-sum p_i log p_i)`` of the normalised eigenvalues ``p_i`` of the
  pooled, centred feature covariance and the anisotropy ``p_1`` (top eigenvalue share), of the
  raw features and of the unit-normalised rows that the default ``ccfv`` sees;
- ``|mean of the unit rows|``: how far the features sit in one cone of the sphere (1 = all
  parallel, ~0 = spread over it); a ReLU output lies in the positive orthant;
- CC-FV's two terms alone (default ``ccfv``: paper formulas, class Gaussians on the unit
  sphere): ``log F_v`` and ``-log C_cons`` of that layer;

per model: the number and names of the hooked layers and the normalisation layers the network
holds; and then the same terms after controlled perturbations of the features that hold for any
network (``PERTURBATIONS``), to show which term each property moves, and the scores of the
candidate estimators of ``docs/explanation/choosing-the-default.md``.

Usage (the benchmark's pre-trained 2D checkpoints, copied, on 12 cases of a prepared target)::

    python benchmarks/diagnose_ccfv.py --checkpoints DIR --size 64 --channels 3 \\
        --data TARGET_FOLDER --out OUT --cases 12
    python benchmarks/diagnose_ccfv.py --bank bank.yaml --data TARGET_FOLDER --out OUT

``--checkpoints`` writes ``OUT/bank.yaml`` from benchmark checkpoints named
``ARCH__SOURCE-HASH.pt`` (as ``ccfv bench`` does for a target). Writes ``OUT/diagnosis.json``
and ``OUT/diagnosis.md``; features are cached under ``OUT/features`` (a second run re-analyses
without running a model).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import warnings
from pathlib import Path

import numpy as np

from ccfv.errors import CCFVWarning, UserError

NORM_TYPES = ("BatchNorm", "InstanceNorm", "GroupNorm", "LayerNorm")

#: Candidate estimators whose scores are reported beside the diagnosis.
CANDIDATES = [
    "ccfv",
    "ccfv-paper",
    "ccfv-pca",
    "ccfv-pca[whiten=true]",
    "ccfv-null",
    "ccfv-hscore",
    "hscore",
    "logme",
]


# --- features ------------------------------------------------------------------------------


def _spectrum(X: np.ndarray) -> np.ndarray:
    """Eigenvalues (descending, >= 0) of the centred covariance of the rows of X."""
    Xc = X - X.mean(axis=0)
    lam = np.linalg.eigvalsh(Xc.T @ Xc / max(len(X) - 1, 1))[::-1]
    return np.maximum(lam, 0.0)


def effective_rank(X: np.ndarray) -> tuple[float, float]:
    """``(exp(entropy of p), p_1)`` with ``p`` the normalised covariance eigenvalues of X."""
    lam = _spectrum(X)
    total = lam.sum()
    if total <= 0:
        return 1.0, 1.0
    p = lam / total
    p = p[p > 0]
    return float(math.exp(-np.sum(p * np.log(p)))), float(p[0])


def _unit(X: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(X, axis=1, keepdims=True)
    return X / np.where(norms > 0, norms, 1.0)


def _pooled(cases) -> np.ndarray:
    return np.concatenate([X for X, _ in cases])


def ccfv_terms(features) -> dict:
    """Per layer ``log F_v`` and ``-log C_cons`` of the default ``ccfv``, and the score."""
    from ccfv.estimators.ccfv import ccfv_parts

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CCFVWarning)
        parts = ccfv_parts(features, "paper", normalize_consistency=True)  # = DEFAULT_CCFV
    return {
        "score": parts.score,
        "log_variety": {p.layer: math.log(p.variety or math.nan) for p in parts.layers},
        "neg_log_consistency": {
            p.layer: -math.log(p.consistency or math.nan) for p in parts.layers
        },
    }


# --- perturbations (each maps one layer's cases to new cases; seeded) ----------------------


def _shrink(cases, rng, a=0.5):
    """Each sample pulled half way to its class mean within its case: the within-class spread
    halves, as when a map is interpolated from a coarser grid (neighbouring voxels of one class
    share their values)."""
    out = []
    for X, y in cases:
        Z = X.copy()
        for k in np.unique(y):
            m = X[y == k].mean(axis=0)
            Z[y == k] = m + a * (X[y == k] - m)
        out.append((Z, y))
    return out


def _rotate(cases, rng):
    from scipy.stats import ortho_group

    d = cases[0][0].shape[1]
    Q = ortho_group.rvs(d, random_state=rng) if d > 1 else np.ones((1, 1))
    return [(X @ Q, y) for X, y in cases]


def _duplicate(cases, rng):
    return [(np.hstack([X, X]), y) for X, y in cases]


def _pca(cases, rng, k=8):
    """The pooled features' top-k principal subspace kept (the mean kept too)."""
    P = _pooled(cases)
    mu = P.mean(axis=0)
    _, V = np.linalg.eigh((P - mu).T @ (P - mu))
    V = V[:, ::-1][:, :k]
    return [(mu + (X - mu) @ V @ V.T, y) for X, y in cases]


def _noise(cases, rng, rel=0.5):
    """Isotropic Gaussian noise, standard deviation ``rel`` x the RMS channel std."""
    sd = rel * math.sqrt(float(np.mean(_pooled(cases).var(axis=0))))
    return [(X + sd * rng.normal(size=X.shape), y) for X, y in cases]


def _centre(cases, rng):
    """Every sample minus the pooled mean: the same features with the origin moved to their
    centre (CC-FV's unit sphere is centred on the origin, a ReLU output sits in one orthant)."""
    mu = _pooled(cases).mean(axis=0)
    return [(X - mu, y) for X, y in cases]


PERTURBATIONS = {
    "shrink within-class x0.5": _shrink,
    "random rotation": _rotate,
    "channels duplicated": _duplicate,
    "PCA to 8 components": _pca,
    "isotropic noise 0.5 sd": _noise,
    "centred on the pooled mean": _centre,
}


def perturbed(features, name, seed=0):
    rng = np.random.default_rng(seed)
    return {layer: PERTURBATIONS[name](cases, rng) for layer, cases in features.items()}


# --- the networks ---------------------------------------------------------------------------


def network_facts(bank_file: Path) -> dict:
    """Per model: hooked layers, each one's map size against the input, the norm layers."""
    import torch

    from ccfv.bank.build import build_model
    from ccfv.bank.layers import hooked, resolve_layers
    from ccfv.bank.schema import load_bank

    facts = {}
    for entry in load_bank(bank_file):
        model = build_model(entry).eval()
        specs = resolve_layers(model, entry)
        roi = list(entry.preprocessing.roi or ())
        norms = sorted(
            {
                type(m).__name__
                for m in model.modules()
                if any(t in type(m).__name__ for t in NORM_TYPES)
            }
        )
        in_channels = int(entry.args.get("in_channels", 1))
        with torch.no_grad(), hooked(model, specs) as store:
            model(torch.zeros(1, in_channels, *roi))
            shapes = {key: list(t.shape[2:]) for key, t in store.items()}
        mods = dict(model.named_modules())
        facts[entry.name] = {
            "input": roi,
            "norm_layers": norms,
            "n_layers": len(specs),
            "layers": [
                {
                    "key": s.key,
                    "module": type(mods[s.name]).__name__,
                    "map": shapes.get(s.key),
                    "resolution": (shapes[s.key][0] / roi[0] if s.key in shapes else None),
                }
                for s in specs
            ],
        }
    return facts


def bank_from_checkpoints(folder: Path, size: int, channels: int, out: Path) -> Path:
    """A bank YAML of every ``ARCH__SOURCE-HASH.pt`` in ``folder`` (as ``ccfv bench``)."""
    import yaml

    from ccfv.bank.checkpoint import load_torch_file
    from ccfv.bench.networks import network_spec

    models = []
    for path in sorted(folder.glob("*__*.pt")):
        arch, source = path.stem.split("__", 1)
        meta = load_torch_file(path, f"benchmark checkpoint {path}")["meta"]
        spec = network_spec(arch, channels, meta["out_channels"], size)
        models.append(
            {
                "name": f"{arch}__{source.rsplit('-', 1)[0]}",
                **spec,
                "checkpoint": str(path.resolve()),
                "layers": "auto",
                "preprocessing": {
                    "intensity": {
                        "kind": "range",
                        "a_min": 0,
                        "a_max": 255,
                        "b_min": 0,
                        "b_max": 1,
                    },
                    "roi": [size, size],
                },
            }
        )
    if not models:
        raise UserError(f"--checkpoints {folder}: no file named ARCH__SOURCE-HASH.pt there")
    bank = out / "bank.yaml"
    bank.write_text(yaml.safe_dump({"models": models}, sort_keys=False))
    return bank


# --- the run --------------------------------------------------------------------------------


def read_features(
    bank: Path, data: Path, out: Path, cases: int, seed: int, counts: list[int]
) -> dict:
    from ccfv.rank import rank

    features = {}

    def keep(model, feats, _predictions):
        features[model] = {
            layer: [(np.asarray(X, dtype=np.float64), np.asarray(y)) for X, y in pairs]
            for layer, pairs in feats.items()
        }

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CCFVWarning)
        rank(
            bank,
            data,
            methods=["ccfv"],
            cases=cases,
            seed=seed,
            counts=counts,
            cache_dir=out / "features",
            bootstrap=0,
            progress=False,
            log=lambda *_: None,
            on_model=keep,
        )
    return features


def diagnose(features: dict, facts: dict) -> dict:
    from ccfv.estimators.registry import get_estimator

    report = {}
    for model, feats in features.items():
        t0 = time.perf_counter()
        layers = []
        terms = ccfv_terms(feats)
        for l, (layer, cases) in enumerate(feats.items()):
            P = _pooled(cases)
            er_raw, an_raw = effective_rank(P)
            er_unit, an_unit = effective_rank(_unit(P))
            fact = facts.get(model, {}).get("layers", [])
            layers.append(
                {
                    "layer": layer,
                    "dim": int(P.shape[1]),
                    "samples": int(P.shape[0]),
                    "map": fact[l]["map"] if l < len(fact) else None,
                    "resolution": fact[l]["resolution"] if l < len(fact) else None,
                    "erank_raw": er_raw,
                    "anisotropy_raw": an_raw,
                    "erank_unit": er_unit,
                    "anisotropy_unit": an_unit,
                    "mean_unit_norm": float(np.linalg.norm(_unit(P).mean(axis=0))),
                    "log_variety": terms["log_variety"][layer],
                    "neg_log_consistency": terms["neg_log_consistency"][layer],
                }
            )
        moved = {}
        for name in PERTURBATIONS:
            t = ccfv_terms(perturbed(feats, name))
            moved[name] = {
                "score": t["score"] - terms["score"],
                "log_variety": float(
                    np.mean(list(t["log_variety"].values()))
                    - np.mean(list(terms["log_variety"].values()))
                ),
                "neg_log_consistency": float(
                    np.mean(list(t["neg_log_consistency"].values()))
                    - np.mean(list(terms["neg_log_consistency"].values()))
                ),
            }
        candidates: dict[str, float | str] = {}
        for name in CANDIDATES:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", CCFVWarning)
                try:
                    candidates[name] = get_estimator(name)(feats)
                except (UserError, KeyError) as exc:
                    candidates[name] = f"failed: {exc}"
        report[model] = {
            "architecture": model.split("__")[0],
            **{k: v for k, v in facts.get(model, {}).items() if k != "layers"},
            "score": terms["score"],
            "layers": layers,
            "perturbations": moved,
            "candidates": candidates,
            "seconds": time.perf_counter() - t0,
        }
        print(f"{model}: done in {report[model]['seconds']:.1f} s", flush=True)
    return report


def _f(value, digits=3):
    if isinstance(value, str) and value.startswith("failed"):
        return "failed"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def architecture_split(report: dict) -> dict:
    """Per candidate and pair of architectures (A, B): the share of the model pairs (one of A,
    one of B) in which the A model scores higher. 1 or 0: the score orders the two families
    completely, whatever the source task; the issue's symptom."""
    archs = sorted({r["architecture"] for r in report.values()})
    out: dict = {}
    for name in CANDIDATES:
        values = {
            m: r["candidates"][name]
            for m, r in report.items()
            if isinstance(r["candidates"][name], float)
        }
        for i, a in enumerate(archs):
            for b in archs[i + 1 :]:
                pairs = [
                    (values[x], values[y])
                    for x in values
                    for y in values
                    if report[x]["architecture"] == a and report[y]["architecture"] == b
                ]
                if pairs:
                    out.setdefault(name, {})[f"{a} > {b}"] = (
                        sum(u > v for u, v in pairs) / len(pairs),
                        len(pairs),
                    )
    return out


def markdown(report: dict, header: str) -> str:
    lines = [
        f"# CC-FV diagnosis: {header}",
        "",
        "## Per model and hooked layer (default `ccfv` terms)",
        "",
        "| model | norm layers | layer | dim | map / input | erank raw | aniso raw | "
        "erank unit | aniso unit | mean unit | log F_v | -log C |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for model, r in report.items():
        for layer in r["layers"]:
            res = layer["resolution"]
            lines.append(
                f"| {model} | {','.join(r.get('norm_layers', [])) or '-'} | {layer['layer']} | "
                f"{layer['dim']} | {_f(res, 3) if res is not None else '?'} | "
                f"{_f(layer['erank_raw'], 1)} | {_f(layer['anisotropy_raw'])} | "
                f"{_f(layer['erank_unit'], 1)} | {_f(layer['anisotropy_unit'])} | "
                f"{_f(layer['mean_unit_norm'])} | {_f(layer['log_variety'])} | "
                f"{_f(layer['neg_log_consistency'])} |"
            )
    lines += [
        "",
        "## Change of the layer-mean terms under each perturbation",
        "",
        "| model | perturbation | d score | d log F_v | d (-log C) |",
        "|---|---|---|---|---|",
    ]
    for model, r in report.items():
        for name, d in r["perturbations"].items():
            lines.append(
                f"| {model} | {name} | {_f(d['score'])} | {_f(d['log_variety'])} | "
                f"{_f(d['neg_log_consistency'])} |"
            )
    lines += [
        "",
        "## Candidate scores",
        "",
        "| model | " + " | ".join(f"`{c}`" for c in CANDIDATES) + " |",
        "|---|" + "---|" * len(CANDIDATES),
    ]
    for model, r in report.items():
        lines.append(
            f"| {model} | " + " | ".join(_f(r["candidates"][c]) for c in CANDIDATES) + " |"
        )
    split = architecture_split(report)
    if split:
        keys = sorted({k for v in split.values() for k in v})
        lines += [
            "",
            "## Architecture split: share of cross-family model pairs ordered A > B",
            "",
            "(1.000 or 0.000: every model of one family above every model of the "
            "other, whatever its source task; model pairs in brackets)",
            "",
            "| candidate | " + " | ".join(keys) + " |",
            "|---|" + "---|" * len(keys),
        ]
        for name, row in split.items():
            lines.append(
                f"| `{name}` | "
                + " | ".join(f"{row[k][0]:.3f} ({row[k][1]})" if k in row else "-" for k in keys)
                + " |"
            )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--bank", type=Path, help="bank YAML file")
    source.add_argument(
        "--checkpoints", type=Path, help="folder of benchmark checkpoints ARCH__SOURCE-HASH.pt"
    )
    parser.add_argument("--size", type=int, default=64, help="image size (--checkpoints)")
    parser.add_argument("--channels", type=int, default=3, help="image channels (--checkpoints)")
    parser.add_argument("--data", type=Path, required=True, help="target dataset folder")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--cases", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--counts", type=int, nargs="+", default=[100, 200, 400])
    args = parser.parse_args(argv)
    try:
        if not args.data.is_dir():
            raise UserError(f"--data {args.data}: not a folder")
        args.out.mkdir(parents=True, exist_ok=True)
        bank = (
            args.bank
            if args.bank is not None
            else bank_from_checkpoints(args.checkpoints, args.size, args.channels, args.out)
        )
        t0 = time.perf_counter()
        facts = network_facts(bank)
        features = read_features(bank, args.data, args.out, args.cases, args.seed, args.counts)
        print(f"features of {len(features)} models in {time.perf_counter() - t0:.1f} s", flush=True)
        report = diagnose(features, facts)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    header = f"{args.data} ({args.cases} cases, counts {args.counts}, seed {args.seed})"
    (args.out / "diagnosis.json").write_text(
        json.dumps(
            {
                "data": str(args.data),
                "cases": args.cases,
                "counts": args.counts,
                "seed": args.seed,
                "models": report,
                "architecture_split": architecture_split(report),
            },
            indent=1,
        )
    )
    (args.out / "diagnosis.md").write_text(markdown(report, header))
    print(f"wrote {args.out / 'diagnosis.md'} and diagnosis.json", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
