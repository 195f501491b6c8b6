"""Feature cache: round trip, atomic writes, leftovers and corrupt files treated as missing."""

from __future__ import annotations

import json
import os
import warnings

import numpy as np
import pytest

from ccfv.errors import CCFVWarning, UserError
from ccfv.extract import FeatureCache, cache_key
from ccfv.extract import cache as cache_module


def _features(seed=0, n_cases=3):
    rng = np.random.default_rng(seed)
    out = {}
    for layer, dim in (("decoder.3", 16), ("decoder.2", 8)):
        out[layer] = [
            (rng.standard_normal((n, dim)), rng.integers(0, 3, n))
            for n in rng.integers(5, 40, n_cases)
        ]
    return out


def _assert_same(got, want):
    assert list(got) == list(want)
    for layer in want:
        assert len(got[layer]) == len(want[layer])
        for (X, y), (X0, y0) in zip(got[layer], want[layer]):
            assert X.dtype == np.float64 and y.dtype == np.int64
            np.testing.assert_array_equal(X, np.asarray(X0, np.float32))
            np.testing.assert_array_equal(y, y0)


def test_round_trip_and_sidecar(tmp_path):
    cache = FeatureCache(tmp_path / "cache")
    key = cache_key("model-fp", "data-fp", "plan-fp")
    assert cache.get(key) is None and key not in cache
    feats = _features()
    path = cache.put(key, feats, info={"model": "unet"})
    assert path == tmp_path / "cache" / f"{key}.npz" and key in cache
    _assert_same(cache.get(key), feats)
    sidecar = json.loads(path.with_suffix(".json").read_text())
    assert sidecar["layers"] == ["decoder.3", "decoder.2"] and sidecar["n_cases"] == 3
    assert sidecar["dims"] == {"decoder.3": 16, "decoder.2": 8} and sidecar["model"] == "unet"
    assert [p.name for p in path.parent.iterdir() if p.suffix == ".tmp"] == []
    # overwrite
    cache.put(key, _features(1))
    _assert_same(cache.get(key), _features(1))


def test_cache_key():
    k = cache_key("m", "d", "p")
    assert k == cache_key("m", "d", "p") and len(k) == 64
    assert (
        len({k, cache_key("m2", "d", "p"), cache_key("m", "d2", "p"), cache_key("m", "d", "p2")})
        == 4
    )


def test_leftover_temp_file_is_ignored(tmp_path):
    cache = FeatureCache(tmp_path)
    key = cache_key("m", "d", "p")
    leftover = tmp_path / f".{key}.npz.abc123.tmp"
    leftover.write_bytes(b"PK\x03\x04 half-written garbage")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a leftover is not even worth a warning
        assert cache.get(key) is None
        cache.put(key, _features())
        _assert_same(cache.get(key), _features())
    assert leftover.exists()  # someone else's temp file is left alone


@pytest.mark.parametrize("damage", ["truncate", "flip", "empty", "other_key"])
def test_corrupt_file_is_treated_as_missing_and_recomputed(tmp_path, damage):
    cache = FeatureCache(tmp_path)
    key = cache_key("m", "d", "p")
    path = cache.put(key, _features())
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "flip":
        i = len(data) // 3
        path.write_bytes(data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1 :])
    elif damage == "empty":
        path.write_bytes(b"")
    else:
        other = cache_key("m", "d", "other")
        os.replace(cache.put(other, _features(2)), path)
    with pytest.warns(CCFVWarning, match="recomputed"):
        assert cache.get(key) is None
    cache.put(key, _features())  # the caller recomputes and overwrites
    _assert_same(cache.get(key), _features())


def test_a_failed_write_leaves_the_old_file_and_no_temp(tmp_path, monkeypatch):
    cache = FeatureCache(tmp_path)
    key = cache_key("m", "d", "p")
    cache.put(key, _features(0))

    def crash(fh, **arrays):
        fh.write(b"PK\x03\x04 partial")
        raise KeyboardInterrupt  # killed half-way

    monkeypatch.setattr(cache_module.np, "savez", crash)
    with pytest.raises(KeyboardInterrupt):
        cache.put(key, _features(1))
    monkeypatch.undo()
    _assert_same(cache.get(key), _features(0))
    assert [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_per_case_parts(tmp_path):
    cache = FeatureCache(tmp_path)
    key = cache_key("m", "d", "p")
    feats = _features()
    ids = ["case_a", "case/b", "case c"]
    for i, cid in enumerate(ids[:2]):
        cache.put_case(key, cid, {layer: cases[i] for layer, cases in feats.items()})
    assert cache.assemble(key, ids) is None  # case c still missing
    got = cache.get_case(key, "case/b")
    np.testing.assert_array_equal(got["decoder.2"][1], feats["decoder.2"][1][1])
    assert cache.get_case(key, "case c") is None
    cache.put_case(key, "case c", {layer: cases[2] for layer, cases in feats.items()})
    _assert_same(cache.assemble(key, ids), feats)
    _assert_same(cache.get(key), feats)
    assert not (tmp_path / f"{key}.cases").exists()
    assert json.loads((tmp_path / f"{key}.json").read_text())["case_ids"] == ids
    cache.discard(key)
    assert cache.get(key) is None and not (tmp_path / f"{key}.json").exists()


def test_corrupt_part_is_missing(tmp_path):
    cache = FeatureCache(tmp_path)
    key = cache_key("m", "d", "p")
    path = cache.put_case(key, "a", {"l": (np.ones((3, 2)), np.zeros(3, int))})
    path.write_bytes(path.read_bytes()[:20])
    with pytest.warns(CCFVWarning, match="unreadable"):
        assert cache.get_case(key, "a") is None


@pytest.mark.parametrize("key", ["../escape", ".hidden", "", "a/b"])
def test_bad_keys(tmp_path, key):
    with pytest.raises(UserError, match="key"):
        FeatureCache(tmp_path).get(key)


def test_bad_feature_sets(tmp_path):
    cache = FeatureCache(tmp_path)
    with pytest.raises(UserError, match="empty"):
        cache.put("k", {})
    with pytest.raises(UserError, match="different numbers"):
        cache.put("k", {"a": [(np.ones((2, 2)), np.zeros(2, int))], "b": []})
    with pytest.raises(UserError, match="do not match"):
        cache.put("k", {"a": [(np.ones((2, 2)), np.zeros(3, int))]})
