"""Is the neuron set stable? Identify it again on disjoint halves and on bootstrap resamples of the scoring items.

Score tables are sums over items, so scoring once with every item's group relabelled ``"<group>\\x1fpart<k>"``
(``label_parts``: each item in one of ``P`` parts, drawn at random) gives, at no extra scoring cost, a table from
which any weighted union of parts can be rebuilt by adding rows (``collapse``): all parts with weight 1 is the
ordinary table; parts ``0..P/2-1`` and ``P/2..P-1`` are two disjoint random halves of the items; multinomial part
weights are a bootstrap resample (of parts, i.e. a cluster bootstrap with P clusters).

``measure`` identifies the set on each of these (the other tables, e.g. CountryRC, fixed) and reports the Jaccard
overlap ``|A ∩ B| / |A ∪ B|`` of the neuron sets, overall, per kind (MLP gate / attention q/k/v) and per layer band
(early / middle / late thirds of the layers):

- split-half: the set found on one half against the set found on the other half;
- bootstrap: each resample's set against the set found on all items (mean and minimum over the resamples);
- chance: the expected split-half Jaccard of two random sets of the same sizes among that scope's neurons.

The set is called **unstable** (a warning in the report) when the overall split-half Jaccard is below
``UNSTABLE_BELOW`` = 0.5: the two halves of the data agree on fewer neurons than they disagree on.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from culnig_ext.selection.neurons import NeuronSet
from culnig_ext.models.sites import ATTN, MLP, parse_site_name
from culnig_ext.scoring.table import ScoreTable

SEP = "\x1fpart"
UNSTABLE_BELOW = 0.5


def label_parts(encoded: Sequence[Any], n_parts: int, seed: int) -> list[Any]:
    """Copies of encoded items (``ScoreItem``s or dicts with ``"group"``) with the group relabelled ``group + SEP + str(part)``;
    parts are a seeded random balanced assignment (item ``i`` goes to part ``rank_i % n_parts``). The same ids and
    seed give the same parts, so an item's control variant (same position) lands in the same part."""
    if n_parts < 2:
        raise ValueError(f"n_parts must be >= 2 (two halves at least), got {n_parts}")
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(encoded), generator=g).tolist()
    part = [0] * len(encoded)
    for rank, i in enumerate(order):
        part[i] = rank % n_parts
    out = []
    for i, item in enumerate(encoded):
        is_dict = isinstance(item, Mapping)
        group = str(item["group"] if is_dict else item.group)
        if SEP in group:
            raise ValueError(f"item {i}: group {group!r} already holds a part label")
        label = f"{group}{SEP}{part[i]}"
        out.append({**item, "group": label} if is_dict else dataclasses.replace(item, group=label))
    return out


def split_group(label: str) -> tuple[str, int]:
    """``"US\\x1fpart3"`` -> ``("US", 3)``; raises ValueError naming a label without a part."""
    group, sep, part = label.rpartition(SEP)
    if not sep or not part.isdigit():
        raise ValueError(f"group {label!r} has no part label (was the table scored with label_parts?)")
    return group, int(part)


def n_parts_of(table: ScoreTable) -> int:
    return 1 + max(split_group(g)[1] for g in table.groups)


def collapse(table: ScoreTable, weights: Sequence[int] | None = None) -> ScoreTable:
    """The table by group from a part-labelled table: rows of the same group added with integer ``weights[part]``
    (None: all 1, the full table). Groups whose total weight is 0 are dropped."""
    labels = [split_group(g) for g in table.groups]
    n_parts = 1 + max(p for _, p in labels)
    w = [1] * n_parts if weights is None else [int(x) for x in weights]
    if len(w) != n_parts or any(x < 0 for x in w):
        raise ValueError(f"weights must be {n_parts} non-negative integers, got {list(weights or [])}")
    # rows kept (weight > 0) and the group row each is added into; groups in order of first appearance
    rows = [r for r, (_, p) in enumerate(labels) if w[p] > 0]
    groups = list(dict.fromkeys(labels[r][0] for r in rows))
    src = torch.tensor(rows, dtype=torch.int64)
    dst = torch.tensor([groups.index(labels[r][0]) for r in rows], dtype=torch.int64)
    row_w = torch.tensor([w[labels[r][1]] for r in rows], dtype=torch.int64)
    wt = row_w.to(torch.float64)
    sums = {}
    for site in table.sites:
        out = torch.zeros(len(groups), table[site].shape[1], dtype=torch.float64)
        sums[site] = out.index_add_(0, dst, table[site][src] * wt[:, None])
    prob = torch.zeros(len(groups), dtype=torch.float64).index_add_(0, dst, table.prob_sums[src] * wt)
    cnt = torch.zeros(len(groups), dtype=torch.int64).index_add_(0, dst, table.counts[src] * row_w)
    return ScoreTable(groups, cnt, sums, prob, table.metadata)


def jaccard(a: set, b: set) -> float:
    """``|a ∩ b| / |a ∪ b|``; nan when both are empty."""
    union = len(a | b)
    return len(a & b) / union if union else float("nan")


def _bands(num_layers: int, n_bands: int = 3) -> list[tuple[int, int]]:
    edges = np.linspace(0, num_layers, n_bands + 1).round().astype(int)
    return [(int(edges[i]), int(edges[i + 1]) - 1) for i in range(n_bands) if edges[i + 1] > edges[i]]


def scopes(widths: Mapping[str, int]) -> list[tuple[str, Callable[[str], bool], int]]:
    """``(name, site predicate, number of neurons)``: all, per kind, per layer band (thirds)."""
    layers = {s: parse_site_name(s) for s in widths}
    num_layers = 1 + max(layer for layer, _ in layers.values())
    out = [("all neurons", lambda s: True), ("MLP gate", lambda s: layers[s][1] == MLP),
           ("attention q/k/v", lambda s: layers[s][1] == ATTN)]
    for lo, hi in _bands(num_layers):
        out.append((f"layers {lo}-{hi}", lambda s, lo=lo, hi=hi: lo <= layers[s][0] <= hi))
    return [(name, pred, sum(w for s, w in widths.items() if pred(s))) for name, pred in out]


def _keys(ns: NeuronSet, pred: Callable[[str], bool]) -> set[tuple[str, int]]:
    return {(n.site, n.index) for n in ns if pred(n.site)}


def _chance(k1: int, k2: int, n: int) -> float:
    if n == 0 or k1 + k2 == 0:
        return float("nan")
    inter = k1 * k2 / n
    return inter / (k1 + k2 - inter)


@dataclass
class StabilityRow:
    scope: str
    n_full: int
    n_half_a: int
    n_half_b: int
    split_half: float
    chance: float
    boot_mean: float
    boot_min: float


@dataclass
class Stability:
    rows: list[StabilityRow]
    n_parts: int
    n_boot: int
    warning: str | None = None
    notes: list[str] = field(default_factory=list)

    def to_markdown(self) -> str:
        def f(x: float) -> str:
            return "–" if x != x else f"{x:.2f}"

        lines = [f"The set identified again on two disjoint random halves of the scoring items (split-half) and on "
                 f"{self.n_boot} bootstrap resamples of them ({self.n_parts} random parts resampled; compared with "
                 "the set found on all items). Jaccard = shared / united neurons; chance = expected split-half "
                 "Jaccard of random sets of the same sizes.", "",
                 "| scope | neurons (all items) | half A | half B | split-half Jaccard | chance | bootstrap Jaccard "
                 "(mean) | bootstrap Jaccard (min) |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for r in self.rows:
            lines.append(f"| {r.scope} | {r.n_full} | {r.n_half_a} | {r.n_half_b} | {f(r.split_half)} | "
                         f"{f(r.chance)} | {f(r.boot_mean)} | {f(r.boot_min)} |")
        lines.append("")
        lines.append(f"**Warning: {self.warning}**" if self.warning else
                     f"Stable by the report's rule (split-half Jaccard of all neurons >= {UNSTABLE_BELOW}).")
        return "\n".join(lines)


def measure(
    identify: Callable[[Mapping[str, ScoreTable]], NeuronSet],
    parted: Mapping[str, ScoreTable],
    widths: Mapping[str, int],
    *,
    n_boot: int = 5,
    seed: int = 0,
) -> Stability:
    """Split-half and bootstrap Jaccard of the set ``identify`` returns (module docstring).

    Args:
        identify: ``{role: table by group}`` -> NeuronSet (the selection with everything else fixed).
        parted: ``{role: part-labelled table}`` (``label_parts``), all with the same number of parts.
        widths: ``{site: width}`` of the model (the universe of each scope, for the chance level).
        n_boot: bootstrap resamples (0: split-half only).
        seed: seeds ``numpy.random.default_rng``, which draws each resample's part weights as
            ``multinomial(n_parts, [1 / n_parts] * n_parts)`` in turn.
    """
    counts = {role: n_parts_of(t) for role, t in parted.items()}
    if len(set(counts.values())) != 1:
        raise ValueError(f"the part-labelled tables have different numbers of parts: {counts}")
    n_parts = next(iter(counts.values()))
    half = n_parts // 2

    def with_weights(w):
        return identify({role: collapse(t, w) for role, t in parted.items()})

    full = with_weights(None)
    a = with_weights([1] * half + [0] * (n_parts - half))
    b = with_weights([0] * half + [1] * (n_parts - half))
    rng = np.random.default_rng(seed)
    boots = [with_weights(rng.multinomial(n_parts, [1 / n_parts] * n_parts).tolist()) for _ in range(n_boot)]
    rows = []
    for name, pred, n in scopes(widths):
        kf, ka, kb = _keys(full, pred), _keys(a, pred), _keys(b, pred)
        bj = [jaccard(_keys(s, pred), kf) for s in boots]
        rows.append(StabilityRow(name, len(kf), len(ka), len(kb), jaccard(ka, kb), _chance(len(ka), len(kb), n),
                                 float(np.mean(bj)) if bj else float("nan"),
                                 float(np.min(bj)) if bj else float("nan")))
    overall = rows[0].split_half
    warning = None
    if overall != overall or overall < UNSTABLE_BELOW:
        warning = (f"the neuron set is unstable: the two halves of the scoring items share "
                   f"{'no' if overall != overall else f'{overall:.0%} of their'} neurons (split-half Jaccard "
                   f"below {UNSTABLE_BELOW}); findings about these particular neurons may not replicate")
    return Stability(rows, n_parts, n_boot, warning)
