"""On-disk cache of extracted feature sets, one file per (model, data, plan).

Layout in ``cache_dir``::

    <key>.npz            the feature set: per layer and case, X (float32) and y (int64)
    <key>.json           a small human-readable sidecar (layers, cases, dims, fingerprints)
    <key>.cases/*.npz    optional per-case parts of a feature set still being computed
    CACHE_FORMAT         the format the folder's files were written in (:data:`CACHE_FORMAT`)

``key = cache_key(model_fp, data_fp, plan_fp)``. Every write goes to a temporary file in the
same folder (``.<name>.<random>.tmp``) which is then moved over the target with
:func:`os.replace`, so a reader sees either the old file, the new file, or nothing; a leftover
temporary file of a killed run is never read. A file that cannot be read or fails its checks
(truncated, corrupt, another key) is reported with a warning and treated as missing, so the
caller recomputes and overwrites it.

Feature sets are returned as ``{layer_name: [(X float64 (n, d), y int64 (n,)) per case]}``,
the format :mod:`ccfv.estimators` takes.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import warnings
import zipfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from ccfv.errors import CCFVWarning, UserError
from ccfv.files import atomic_write

__all__ = ["FeatureCache", "cache_key", "CACHE_FORMAT"]

#: Bumped whenever the file layout, what is extracted or what the key means changes (2: the
#: model's output probabilities ride along; 3: the data fingerprint hashes the files' content
#: and the class table, not their path, size and modification time); files of another format
#: count as missing.
CACHE_FORMAT = "ccfv-features-3"
#: Name of the file in ``cache_dir`` that records the format its files were written in.
FORMAT_FILE = "CACHE_FORMAT"

_KEY = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,199}$")
_READ_ERRORS = (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, TypeError)


def cache_key(model_fingerprint: str, data_fingerprint: str, plan_fingerprint: str) -> str:
    """The cache key of one (model, data, plan): sha256 hex of the three fingerprints."""
    text = json.dumps(
        [CACHE_FORMAT, str(model_fingerprint), str(data_fingerprint), str(plan_fingerprint)]
    )
    return hashlib.sha256(text.encode()).hexdigest()


def _pack(meta: dict, arrays: dict) -> Callable:
    def write(fh):
        np.savez(fh, __meta__=np.array(json.dumps(meta)), **arrays)

    return write


def _check_pair(X: np.ndarray, y: np.ndarray, where: str) -> None:
    if X.ndim != 2 or y.ndim != 1 or X.shape[0] != y.shape[0]:
        raise ValueError(f"{where}: X {X.shape} and y {y.shape} do not match")
    if X.dtype.kind != "f" or y.dtype.kind not in "iu":
        raise ValueError(f"{where}: dtypes X {X.dtype}, y {y.dtype}")


class FeatureCache:
    """Feature sets on disk under ``cache_dir``; see the module docstring.

    Parameters
    ----------
    cache_dir : folder; created on the first write.
    """

    def __init__(self, cache_dir: str | Path):
        self.cache_dir = Path(cache_dir)
        self._format_noted = False
        old = self.older_format()
        if old is not None:
            warnings.warn(
                f"feature cache {self.cache_dir} holds files of cache format {old}; this "
                f"version writes {CACHE_FORMAT} (the data part of the key now hashes the "
                "files' content), so those files are never read again and every model's "
                "features are extracted once more; delete the old *.npz / *.json / *.cases "
                "files of that folder to free the space",
                CCFVWarning,
                stacklevel=2,
            )

    def older_format(self) -> str | None:
        """The older format the cache folder's files were written in, or None (none, or
        the current one). A folder of feature files without a format file is format 2."""
        marker = self.cache_dir / FORMAT_FILE
        try:
            if marker.is_file():
                found = marker.read_text().strip()
                return None if found == CACHE_FORMAT else (found or "unknown")
            if self.cache_dir.is_dir() and next(self.cache_dir.glob("*.npz"), None):
                return "ccfv-features-2 or older"
        except OSError:
            return None
        return None

    def _note_format(self) -> None:
        """Record :data:`CACHE_FORMAT` in the folder (once per instance, before a write)."""
        if not self._format_noted:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            marker = self.cache_dir / FORMAT_FILE
            if not marker.is_file() or marker.read_text().strip() != CACHE_FORMAT:
                atomic_write(marker, f"{CACHE_FORMAT}\n")
            self._format_noted = True

    # --- whole feature sets --------------------------------------------------------------
    def path(self, key: str) -> Path:
        """Path of the ``.npz`` of ``key``."""
        return self.cache_dir / f"{self._check_key(key)}.npz"

    def __contains__(self, key: str) -> bool:
        return self.path(key).is_file()

    def get(self, key: str) -> dict[str, list[tuple[np.ndarray, np.ndarray]]] | None:
        """The cached feature set of ``key``, or ``None`` when missing or unreadable.

        Returns
        -------
        ``{layer: [(X float64 (n, d), y int64 (n,)) per case]}`` or None. An unreadable or
        inconsistent file gives a :class:`ccfv.errors.CCFVWarning` and None.
        """
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(str(z["__meta__"]))
                if meta.get("format") != CACHE_FORMAT or meta.get("key") != key:
                    raise ValueError(f"format {meta.get('format')!r}, key {meta.get('key')!r}")
                out = {}
                for li, layer in enumerate(meta["layers"]):
                    cases = []
                    for ci in range(int(meta["n_cases"])):
                        X, y = z[f"l{li}_c{ci}_X"], z[f"l{li}_c{ci}_y"]
                        _check_pair(X, y, f"layer {layer!r} case {ci}")
                        cases.append((X.astype(np.float64), y.astype(np.int64)))
                    out[layer] = cases
        except _READ_ERRORS as exc:
            warnings.warn(
                f"feature cache file {str(path)!r} is unreadable ({exc}); treating it "
                "as missing: the features will be recomputed",
                CCFVWarning,
                stacklevel=2,
            )
            return None
        return out

    def put(
        self,
        key: str,
        features: Mapping[str, Sequence[tuple[np.ndarray, np.ndarray]]],
        info: Mapping | None = None,
    ) -> Path:
        """Store a feature set under ``key`` atomically; return the ``.npz`` path.

        Parameters
        ----------
        key : from :func:`cache_key`.
        features : ``{layer: [(X (n, d), y (n,)) per case]}``; stored as float32 / int64.
        info : optional JSON-able extras for the sidecar (e.g. the three fingerprints, case
            ids, model name).
        """
        path = self.path(key)
        layers = list(features)
        if not layers:
            raise UserError("the feature set to cache is empty: extract at least one layer")
        n_cases = {len(features[layer]) for layer in layers}
        if len(n_cases) != 1:
            raise UserError(
                f"layers of the feature set to cache hold different numbers of "
                f"cases {sorted(n_cases)}: every layer must hold every case"
            )
        arrays, dims = {}, {}
        for li, layer in enumerate(layers):
            for ci, (X, y) in enumerate(features[layer]):
                X = np.asarray(X, dtype=np.float32)
                y = np.asarray(y, dtype=np.int64)
                try:
                    _check_pair(X, y, f"layer {layer!r} case {ci}")
                except ValueError as exc:
                    raise UserError(
                        f"cannot cache the feature set: {exc}; X must be (n, d) and y (n,)"
                    ) from exc
                arrays[f"l{li}_c{ci}_X"], arrays[f"l{li}_c{ci}_y"] = X, y
                dims[layer] = int(X.shape[1])
        meta = {"format": CACHE_FORMAT, "key": key, "layers": layers, "n_cases": n_cases.pop()}
        self._note_format()
        atomic_write(path, _pack(meta, arrays))
        sidecar = {**meta, "dims": dims, **(dict(info) if info else {})}
        atomic_write(path.with_suffix(".json"), json.dumps(sidecar, indent=1, default=str))
        return path

    def discard(self, key: str) -> None:
        """Remove the files of ``key`` (feature set, sidecar and per-case parts), if any."""
        path = self.path(key)
        for p in (path, path.with_suffix(".json")):
            p.unlink(missing_ok=True)
        shutil.rmtree(self._parts_dir(key), ignore_errors=True)

    # --- optional per-case parts ---------------------------------------------------------
    def _parts_dir(self, key: str) -> Path:
        return self.cache_dir / f"{self._check_key(key)}.cases"

    def _part_path(self, key: str, case_id: str) -> Path:
        name = hashlib.sha256(str(case_id).encode("utf-8")).hexdigest()[:32]
        return self._parts_dir(key) / f"{name}.npz"

    def get_case(self, key: str, case_id: str) -> dict[str, tuple[np.ndarray, np.ndarray]] | None:
        """The cached features of one case of ``key`` as ``{layer: (X, y)}``, or None."""
        path = self._part_path(key, case_id)
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(str(z["__meta__"]))
                if (
                    meta.get("format") != CACHE_FORMAT
                    or meta.get("key") != key
                    or meta.get("case_id") != str(case_id)
                ):
                    raise ValueError("format, key or case id differs")
                out = {}
                for li, layer in enumerate(meta["layers"]):
                    X, y = z[f"l{li}_X"], z[f"l{li}_y"]
                    _check_pair(X, y, f"layer {layer!r}")
                    out[layer] = (X.astype(np.float64), y.astype(np.int64))
        except _READ_ERRORS as exc:
            warnings.warn(
                f"feature cache part {str(path)!r} (case {case_id!r}) is unreadable "
                f"({exc}); treating it as missing",
                CCFVWarning,
                stacklevel=2,
            )
            return None
        return out

    def put_case(
        self, key: str, case_id: str, features: Mapping[str, tuple[np.ndarray, np.ndarray]]
    ) -> Path:
        """Store the features ``{layer: (X, y)}`` of one case of ``key`` atomically."""
        arrays, layers = {}, list(features)
        for li, layer in enumerate(layers):
            X, y = features[layer]
            arrays[f"l{li}_X"] = np.asarray(X, dtype=np.float32)
            arrays[f"l{li}_y"] = np.asarray(y, dtype=np.int64)
        meta = {"format": CACHE_FORMAT, "key": key, "case_id": str(case_id), "layers": layers}
        path = self._part_path(key, case_id)
        self._note_format()
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, _pack(meta, arrays))
        return path

    def assemble(
        self, key: str, case_ids: Sequence[str], info: Mapping | None = None
    ) -> dict[str, list[tuple[np.ndarray, np.ndarray]]] | None:
        """Join the per-case parts of ``case_ids`` into the feature set of ``key``.

        When every part is present and they share the same layers, the whole set is written
        with :meth:`put`, the parts are removed, and the set is returned (as :meth:`get`
        would); otherwise nothing changes and None is returned.
        """
        found = [self.get_case(key, c) for c in case_ids]
        parts = [p for p in found if p is not None]
        if not parts or len(parts) != len(found):
            return None
        layers = list(parts[0])
        if any(list(p) != layers for p in parts):
            return None
        features = {layer: [p[layer] for p in parts] for layer in layers}
        self.put(
            key,
            features,
            info={"case_ids": [str(c) for c in case_ids], **(dict(info) if info else {})},
        )
        shutil.rmtree(self._parts_dir(key), ignore_errors=True)
        return features

    @staticmethod
    def _check_key(key: str) -> str:
        if not isinstance(key, str) or not _KEY.match(key):
            raise UserError(
                f"feature cache key {key!r} is not a plain file name: use "
                "cache_key(model_fp, data_fp, plan_fp)"
            )
        return key
