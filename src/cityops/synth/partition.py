"""Streets (街道) and communities (社区) as unions of whole blocks, with GB/T 2260 / NBS codes.

Blocks are grouped by recursive weighted bisection (compact groups of about equal weight), then
repaired so that every group is one edge-connected piece. Because groups are unions of whole
blocks whose edges follow road centre lines, streets partition the district and communities
partition their street exactly (REFERENCE Part A §2: 属地管理, 无缝拼接).

Codes (REFERENCE Part A §7): street = district (6) + 3 digits, 001–099 being the 街道 range of
GB/T 10114's type flag; community = street (9) + 3 digits, 居委会 numbered from 001 (the
NBS 12-digit statistical code). Numbering runs north to south in bands, west to east inside a
band — the habit DB11/T 2157-2023 uses for grids, applied here for want of a rule for streets.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from numpy.typing import NDArray
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from cityops.synth.layout import rank_within

__all__ = [
    "COMMUNITIES_PER_STREET",
    "MAX_COMMUNITIES_PER_STREET",
    "MAX_STREETS",
    "bisect",
    "count_areas",
    "merge_small",
    "number_groups",
    "repair_connectivity",
]

F = NDArray[np.float64]
IA = NDArray[np.int64]

#: GB/T 10114 township codes 001–099 are 街道 (REFERENCE Part A §7).
MAX_STREETS = 99
#: 居民委员会 numbered 001–199 (REFERENCE Part A §7, [C]).
MAX_COMMUNITIES_PER_STREET = 199
BUILDINGS_PER_COMMUNITY = 500
COMMUNITIES_PER_STREET = (8, 20)


def count_areas(n_buildings: int) -> tuple[int, int]:
    """Number of streets and communities for a district of ``n_buildings``.

    A community holds ~300–800 buildings (target 500) and a street 8–20 communities (target
    12); past 99 streets (the 街道 code range) streets grow instead.
    """
    n_comm = max(1, round(n_buildings / BUILDINGS_PER_COMMUNITY))
    n_street = min(MAX_STREETS, max(1, round(n_comm / 12)))
    n_comm = max(n_street, min(n_comm, COMMUNITIES_PER_STREET[1] * n_street))
    return n_street, n_comm


def bisect(x: F, y: F, w: F, k: int) -> IA:
    """Label points 0..k-1 by recursive weighted bisection along the longer axis.

    Each split puts ``k1/k`` of the weight on one side (``k1 = k // 2``), so the ``k`` groups
    have about equal weight and are compact. Fewer points than groups leaves some labels empty.
    """
    labels = np.zeros(len(x), dtype=np.int64)
    stack: list[tuple[IA, int, int]] = [(np.arange(len(x)), k, 0)]
    while stack:
        idx, kk, base = stack.pop()
        if kk <= 1 or len(idx) <= 1:
            labels[idx] = base
            continue
        xs, ys = x[idx], y[idx]
        coord = xs if (xs.max() - xs.min()) >= (ys.max() - ys.min()) else ys
        order = idx[np.lexsort((idx, coord))]
        cw = np.cumsum(w[order])
        k1 = kk // 2
        target = cw[-1] * k1 / kk
        # The count of leading elements whose weight is closest to the target share.
        c = int(np.searchsorted(cw, target))
        cut = (
            c + 1
            if c < len(cw) and abs(cw[c] - target) <= abs(target - (cw[c - 1] if c else 0.0))
            else c
        )
        cut = min(max(cut, 1), len(order) - 1)
        stack.append((order[:cut], k1, base))
        stack.append((order[cut:], kk - k1, base + k1))
    return labels


def repair_connectivity(labels: IA, a: IA, b: IA, weight: F, parent: IA, max_iter: int = 50) -> IA:
    """Reassign detached pieces of a group to a neighbouring group with the same parent.

    ``a``/``b`` are edge-adjacent element pairs. The heaviest connected piece of each group
    stays; every other piece joins the neighbouring group (same ``parent``) it touches most.
    """
    labels = labels.copy()
    n = len(labels)
    aa, bb = np.r_[a, b], np.r_[b, a]
    for _ in range(max_iter):
        same = labels[aa] == labels[bb]
        graph = coo_matrix((np.ones(int(same.sum()), np.int8), (aa[same], bb[same])), shape=(n, n))
        comp = connected_components(graph, directed=False)[1]
        cw = pd.DataFrame({"label": labels, "comp": comp, "w": weight + 1e-9})
        tot = cw.groupby(["label", "comp"], sort=True)["w"].sum().reset_index()
        tot = tot.sort_values(["label", "w", "comp"], ascending=[True, False, True], kind="stable")
        main = tot.drop_duplicates("label")
        main_comp = pd.Series(main["comp"].to_numpy(), index=main["label"].to_numpy())
        orphan = comp != main_comp.reindex(labels).to_numpy()
        if not orphan.any():
            return labels
        e = orphan[aa] & (labels[bb] != labels[aa]) & (parent[bb] == parent[aa])
        cand = pd.DataFrame({"comp": comp[aa[e]], "to": labels[bb[e]]})
        if cand.empty:
            break
        best = (
            cand.groupby(["comp", "to"])
            .size()
            .reset_index(name="n")
            .sort_values(["comp", "n", "to"], ascending=[True, False, True], kind="stable")
            .drop_duplicates("comp")
        )
        move = pd.Series(best["to"].to_numpy(), index=best["comp"].to_numpy())
        new = move.reindex(comp).to_numpy()
        hit = orphan & ~np.isnan(new)
        labels[hit] = new[hit].astype(np.int64)
    return labels


def merge_small(labels: IA, a: IA, b: IA, count: F, parent: IA, min_count: float) -> IA:
    """Merge groups holding fewer than ``min_count`` (e.g. buildings) into a neighbour.

    A group of parks or vacant blocks must not become a community of its own: it joins the
    adjacent group of the same parent with the fewest buildings (merging keeps groups
    edge-connected, since they touch).
    """
    labels = labels.copy()
    for _ in range(1000):
        tot = np.bincount(labels, weights=count, minlength=int(labels.max()) + 1)
        present = np.bincount(labels, minlength=len(tot)) > 0
        small = present & (tot < min_count)
        if not small.any():
            break
        la, lb = labels[a], labels[b]
        e = (la != lb) & (parent[a] == parent[b])
        src = np.r_[la[e], lb[e]]
        dst = np.r_[lb[e], la[e]]
        m = small[src]
        if not m.any():
            break
        cand = pd.DataFrame({"src": src[m], "dst": dst[m], "tot": tot[dst[m]]})
        best = cand.sort_values(["src", "tot", "dst"], kind="stable").drop_duplicates("src")
        target = pd.Series(best["dst"].to_numpy(), index=best["src"].to_numpy())
        # Merge into non-small targets first; if all targets are small, merge the smallest.
        ok = ~small[target.to_numpy()]
        if ok.any():
            target = target[ok]
        else:
            first = int(np.argmin(tot[target.index.to_numpy()]))
            target = target.iloc[[first]]
        remap = np.arange(len(tot))
        remap[target.index.to_numpy()] = target.to_numpy()
        labels = remap[labels]
    return labels


def number_groups(labels: IA, x: F, y: F, w: F, parent: IA, band_m: float) -> IA:
    """1-based sequence of each group inside its parent: bands north→south, then west→east."""
    df = pd.DataFrame({"g": labels, "x": x * w, "y": y * w, "w": w + 1e-12, "p": parent})
    agg = df.groupby("g").agg(x=("x", "sum"), y=("y", "sum"), w=("w", "sum"), p=("p", "first"))
    cx, cy = agg["x"] / agg["w"], agg["y"] / agg["w"]
    band = np.floor((cy.max() - cy) / band_m).to_numpy()
    order = np.lexsort((agg.index.to_numpy(), cx.to_numpy(), band, agg["p"].to_numpy()))
    seq = np.empty(len(agg), dtype=np.int64)
    seq[order] = rank_within(agg["p"].to_numpy()[order]) + 1
    mapping = pd.Series(seq, index=agg.index)
    out: IA = mapping.reindex(labels).to_numpy().astype(np.int64)
    return out


def split_counts(total: int, weights: F, lo: int = 1) -> IA:
    """Integer shares of ``total`` proportional to ``weights`` (largest remainder), each ≥ lo."""
    weights = np.asarray(weights, dtype=float)
    if total < lo * len(weights):
        raise ValueError("not enough to give every part its minimum")
    share = weights / weights.sum() * (total - lo * len(weights))
    base = np.floor(share).astype(np.int64)
    rest = total - lo * len(weights) - int(base.sum())
    order = np.lexsort((np.arange(len(weights)), -(share - base)))
    base[order[:rest]] += 1
    out: IA = base + lo
    return out


def band_for(area_m2: float, n_groups: int) -> float:
    """Band height for numbering: about the size of one group."""
    return max(200.0, math.sqrt(area_m2 / max(n_groups, 1)))
