"""Method names, with options in brackets: the ablations are methods like any other."""

import pytest
from conftest import random_feature_set

import ccfv
from ccfv.estimators.registry import ESTIMATORS, get_estimator, split_methods


def test_every_method_of_the_issue_is_registered():
    assert list(ESTIMATORS) == [
        "ccfv",
        "ccfv-paper",
        "ccfv-official",
        "logme",
        "transrate",
        "leep",
        "gbc",
        "hscore",
        "reg-hscore",
        "nleep",
        "nce",
        "parc",
        "sfda",
        "ccfv-pca",
        "ccfv-null",
        "ccfv-hscore",
    ]


def test_default_ccfv_is_the_paper_with_consistency_on_the_sphere(rng):
    f = random_feature_set(rng, n_cases=4, dims=(5, 6), samples=(8, 9), classes=2)
    assert get_estimator("ccfv")(f) == ccfv.ccfv_score(f, normalize_consistency=True)
    assert get_estimator("ccfv-paper")(f) == ccfv.ccfv_score(f)  # the paper's equations
    assert get_estimator("ccfv")(f) != pytest.approx(get_estimator("ccfv-paper")(f))
    # an option in brackets overrides the default's own
    assert get_estimator("ccfv[normalize_consistency=false]")(f) == ccfv.ccfv_score(f)
    scaled = {k: [(5.0 * X, y) for X, y in v] for k, v in f.items()}
    assert get_estimator("ccfv")(scaled) == pytest.approx(get_estimator("ccfv")(f), rel=1e-9)


def test_options_in_brackets(rng):
    f = random_feature_set(rng, n_cases=4, dims=(5, 6), samples=(8, 9), classes=2)
    assert get_estimator("ccfv-paper[layers=last]")(f) == ccfv.ccfv_score(f, layers=["layer1"])
    assert get_estimator("ccfv-paper[distance=kl]")(f) == ccfv.ccfv_score(f, distance="kl")
    assert get_estimator("ccfv[distance=kl]")(f) == ccfv.ccfv_score(
        f, distance="kl", normalize_consistency=True
    )
    assert get_estimator("ccfv-official[ consistency_only = true ; s=2]")(f) == ccfv.ccfv_score(
        f, variant="official", consistency_only=True, s=2
    )
    assert get_estimator("ccfv[normalize=false]").prepare(f)([0, 1, 3]) == pytest.approx(
        ccfv.ccfv_score(
            {k: [v[i] for i in (0, 1, 3)] for k, v in f.items()},
            normalize=False,
            normalize_consistency=True,
        ),
        rel=1e-12,
    )
    assert get_estimator("gbc[covariance=spherical]")(f) == ccfv.gbc_score(
        f, covariance="spherical"
    )
    assert get_estimator("ccfv") is ESTIMATORS["ccfv"]


def test_bad_method_names():
    with pytest.raises(ccfv.UserError, match="keys among consistency_only, distance"):
        get_estimator("ccfv[foo=1]")
    with pytest.raises(ccfv.UserError, match="not an option of ccfv"):
        get_estimator("ccfv[variant=official]")  # that is what ccfv-official is for
    with pytest.raises(ccfv.UserError, match="unknown method 'lgome'"):
        get_estimator("lgome")


def test_split_methods():
    assert split_methods("ccfv, logme,ccfv[distance=kl; s=2],,gbc[covariance=spherical]") == [
        "ccfv",
        "logme",
        "ccfv[distance=kl; s=2]",
        "gbc[covariance=spherical]",
    ]


def test_the_bench_report_sets_apart_only_the_variant_study():
    from ccfv.bench.report import is_ablation

    for method in (
        "ccfv-paper[variety_only=true]",
        "ccfv[consistency_only=true]",
        "ccfv-official[layers=last]",
        "ccfv-paper[distance=kl]",
        "ccfv-paper[normalize=false]",
        "ccfv@proportional",
        "ccfv-official@proportional",
    ):
        assert is_ablation(method), method
    for method in (
        "ccfv",
        "ccfv-paper",
        "ccfv-official",
        "ccfv-pca",
        "ccfv-pca[whiten=true]",
        "ccfv-null",
        "ccfv-hscore",
        "logme",
        "nleep[mixture=sklearn; threads=null]",
    ):
        assert not is_ablation(method), method


def test_one_default_method_for_rank_select_and_the_command_line():
    from ccfv.cli import build_parser
    from ccfv.estimators.registry import DEFAULT_METHOD
    from ccfv.rank import RankSettings

    assert DEFAULT_METHOD in ccfv.ESTIMATORS
    assert RankSettings().methods == (DEFAULT_METHOD,)
    args = build_parser().parse_args(["rank", "--bank", "b.yaml", "--data", "d"])
    assert args.methods == DEFAULT_METHOD
