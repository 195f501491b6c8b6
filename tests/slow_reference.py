"""Slow, obvious CC-FV written straight from docs/explanation/method.md, with scipy's ``sqrtm``.

Loops over every pair, every class, every sample pair; no batching, no factor tricks. It is
what the fast estimator is checked against (and what ``benchmarks/bench_estimator.py`` times).
"""

from __future__ import annotations

import numpy as np
from scipy.linalg import sqrtm


def gaussian(X):
    return X.mean(axis=0), np.atleast_2d(np.cov(X.T))


def w2_paper(Xi, Xj):
    """W2 with the symmetric form Tr (S_i^1/2 S_j S_i^1/2)^1/2, negatives clipped."""
    mi, Si = gaussian(Xi)
    mj, Sj = gaussian(Xj)
    root = np.real(sqrtm(Si))
    inner = np.real(np.trace(sqrtm(root @ Sj @ root)))
    sq = np.sum((mi - mj) ** 2) + np.trace(Si) + np.trace(Sj) - 2 * inner
    return float(np.sqrt(max(sq, 0.0)))


def w2_official(Xi, Xj):
    """The released form: Tr sqrtm(S_i S_j) of the non-symmetric product, sqrt(abs(.))."""
    mi, Si = gaussian(Xi)
    mj, Sj = gaussian(Xj)
    sq = np.sum((mi - mj) ** 2) + np.trace(Si) + np.trace(Sj) - 2 * np.trace(sqrtm(Si @ Sj))
    return float(np.sqrt(abs(sq)))


def kl_sym(Xi, Xj, ridge):
    def reg(X):
        m, S = gaussian(X)
        return m, S + ridge * np.trace(S) / S.shape[0] * np.eye(S.shape[0])

    (mi, Si), (mj, Sj) = reg(Xi), reg(Xj)
    d = len(mi)

    def kl(m0, S0, m1, S1):
        inv1 = np.linalg.inv(S1)
        return 0.5 * (
            np.trace(inv1 @ S0)
            + (m1 - m0) @ inv1 @ (m1 - m0)
            - d
            + np.linalg.slogdet(S1)[1]
            - np.linalg.slogdet(S0)[1]
        )

    return 0.5 * (kl(mi, Si, mj, Sj) + kl(mj, Sj, mi, Si))


def bhattacharyya(Xi, Xj, ridge):
    def reg(X):
        m, S = gaussian(X)
        return m, S + ridge * np.trace(S) / S.shape[0] * np.eye(S.shape[0])

    (mi, Si), (mj, Sj) = reg(Xi), reg(Xj)
    S = (Si + Sj) / 2
    gap = mi - mj
    return gap @ np.linalg.inv(S) @ gap / 8 + 0.5 * (
        np.linalg.slogdet(S)[1] - 0.5 * np.linalg.slogdet(Si)[1] - 0.5 * np.linalg.slogdet(Sj)[1]
    )


def energy(V, s=1.0, normalize=True):
    if normalize:
        V = V / np.linalg.norm(V, axis=1, keepdims=True)
    total, count = 0.0, 0
    for a in range(len(V)):
        for b in range(len(V)):
            if a != b:
                dist = np.sqrt(np.sum((V[a] - V[b]) ** 2))
                total += np.log(1 / dist) if s == 0 else dist ** (-s)
                count += 1
    return total / count


def paper_score(features, distance=w2_paper, s=1.0, normalize=True, parts=False, energy=energy):
    terms, layer_parts = [], []
    for cases in features.values():
        classes = sorted({int(k) for _, y in cases for k in y} - {0})
        c_cons = 0.0
        for k in classes:
            members = [X[y == k] for X, y in cases if np.sum(y == k) >= 2]
            if len(members) < 2:
                continue
            dists = [
                distance(members[i], members[j])
                for i in range(len(members))
                for j in range(len(members))
                if i != j
            ]
            c_cons += np.sum(dists) / (len(members) * (len(members) - 1))
        f_v = np.mean([1 / energy(X, s, normalize) for X, _ in cases])
        terms.append(np.log(f_v / c_cons))
        layer_parts.append((f_v, c_cons))
    return (float(np.mean(terms)), layer_parts) if parts else float(np.mean(terms))


def official_score(features, parts=False):
    total, layer_parts = 0.0, []
    for cases in features.values():
        means = np.array([X.mean(axis=0) for X, _ in cases])
        n = len(means)
        inv = [
            1 / np.sqrt(np.sum((means[i] - means[j]) ** 2) + 1e-3)
            for i in range(n)
            for j in range(i + 1, n)
        ]
        variety = np.sum(inv) / n / (n - 1) * 2
        classes = sorted({int(k) for _, y in cases for k in y} - {0})
        w = 0.0
        for k in classes:
            members = [X[y == k] for X, y in cases]
            for i in range(len(members)):
                for j in range(i + 1, len(members)):
                    w += w2_official(members[i], members[j])
            w += w / (len(members) * len(members) / 2) / len(classes)
        total += np.log(variety / w)
        layer_parts.append((variety, w))
    return (float(total), layer_parts) if parts else float(total)


def w2_squared_pairs_padded(gaussians):
    """The W2^2 pairs (pdist order) as ``ccfv.estimators.gaussian`` computed them before the
    cases were grouped by rank: every factor zero-padded to the widest, case i's products with
    all later cases one matrix product, copied to a contiguous stack, serial. What the grouped
    path is checked against and what ``benchmarks/bench_estimator.py`` times it against."""
    from ccfv.estimators.gaussian import nuclear_norms

    d = gaussians[0].mean.shape[0]
    n = len(gaussians)
    r_max = max(1, max(g.factor.shape[1] for g in gaussians))
    factors = np.zeros((n, d, r_max))
    for i, g in enumerate(gaussians):
        factors[i, :, : g.factor.shape[1]] = g.factor
    means = np.stack([g.mean for g in gaussians])
    traces = np.array([g.trace for g in gaussians])
    wide = np.ascontiguousarray(factors.transpose(1, 0, 2)).reshape(d, n * r_max)
    rows = []
    for i in range(n - 1):
        factor = gaussians[i].factor
        m = n - 1 - i
        if factor.shape[1] == 0:
            nuclear = np.zeros(m)
        else:
            cross = (factor.T @ wide[:, (i + 1) * r_max :]).reshape(factor.shape[1], m, r_max)
            nuclear = nuclear_norms(np.ascontiguousarray(cross.transpose(1, 0, 2)))
        mean_gap = np.sum((means[i + 1 :] - means[i]) ** 2, axis=1)
        rows.append(mean_gap + traces[i] + traces[i + 1 :] - 2.0 * nuclear)
    return np.concatenate(rows) if rows else np.zeros(0)
