"""Neuron identification (CULNIG, ICLR 2026): culture-general and culture-specific neurons, and random baselines.

Everything works on ``ScoreTable``s (summed ``P * max_t a*dP/da`` per group and site) and returns a ``NeuronSet``.
The rules follow the paper's reference code (ynklab/CULNIG, ``CULNIG/decide_*.py``):

* **general**: contrast score = (sum over groups of the target sums) / N - (same for the control) / N_ctrl; top
  ``floor(n*t)`` per kind (MLP gate neurons of all layers pooled; q/k/v neurons of all layers pooled), minus the top
  ``floor(n*r)`` per kind by the CountryRC score; removed neurons are not replaced.
* **specific**: per-group contrast score; for the target group the top ``floor(n*t)`` of all neurons (MLP and
  attention pooled), minus the top ``floor(n*r)`` of the group's CountryRC score, then kept only when the neuron's
  z-score of the target group across all groups is at least ``z_min``.

Counts use ``floor(n * t)`` in float arithmetic, exactly as the reference's ``int(len(...) * t)``.

Ties (``top_fraction``): neurons are ranked by score, descending, with a stable sort over the *global order* (sites
in site order — layer, then gate, q, k, v — then index), so among equal scores the neuron that comes first in that
order wins. This matches the reference's stable ``sorted(..., reverse=True)`` up to its site order.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from culnig_ext.selection.neurons import Neuron, NeuronSet, site_key, site_widths
from culnig_ext.models.sites import ATTN, KINDS, MLP, parse_site_name
from culnig_ext.scoring.table import ScoreTable

NORMALIZE = ("count", "prob", "none")
# specific() also takes "total": every group divided by the table's total item count, as the reference code does.
SPECIFIC_NORMALIZE = NORMALIZE + ("total",)


# ------------------------------------------------------------------------------------------------ helpers
def top_fraction(scores: torch.Tensor, fraction: float) -> torch.Tensor:
    """Positions of the top ``floor(n * fraction)`` entries of ``scores`` (``Tensor[n]``, float), highest first.

    Ties are broken by position (lower first): a stable descending sort. Returns ``LongTensor[k]``.
    """
    if scores.dim() != 1:
        raise ValueError(f"scores must be 1-D, got shape {tuple(scores.shape)}")
    _check_fraction("fraction", fraction)
    k = math.floor(scores.numel() * fraction)
    if k == 0:
        return torch.zeros(0, dtype=torch.int64)
    order = torch.sort(scores, descending=True, stable=True).indices
    return order[:k]


def _check_fraction(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a fraction in [0, 1], got {value!r}")


def _check_normalize(normalize: str, allowed: tuple[str, ...] = NORMALIZE) -> None:
    if normalize not in allowed:
        raise ValueError(f"unknown normalize {normalize!r}; expected one of {allowed}")


def _check_tables(neur: ScoreTable, others: Mapping[str, ScoreTable | None]) -> dict[str, int]:
    """All tables must hold the same sites with the same widths (and the same model when both say). Returns the
    widths of ``neur`` in site order."""
    if not isinstance(neur, ScoreTable):
        raise TypeError(f"neur must be a ScoreTable, got {type(neur).__name__}")
    widths = site_widths(neur)
    if not widths:
        raise ValueError("the neur table has no sites")
    for role, table in others.items():
        if table is None:
            continue
        if not isinstance(table, ScoreTable):
            raise TypeError(f"{role} must be a ScoreTable or None, got {type(table).__name__}")
        theirs = site_widths(table)
        only_neur = [s for s in widths if s not in theirs]
        only_them = [s for s in theirs if s not in widths]
        if only_neur or only_them:
            raise ValueError(
                f"the {role} table has different sites than the neur table: only in neur {only_neur[:5]}, "
                f"only in {role} {only_them[:5]}"
            )
        for site, width in widths.items():
            if theirs[site] != width:
                raise ValueError(
                    f"site {site!r}: width {width} in the neur table but {theirs[site]} in the {role} table"
                )
        a, b = neur.metadata.get("model"), table.metadata.get("model")
        if a and b and a != b:
            raise ValueError(f"the {role} table is of model {b!r} but the neur table of model {a!r}")
    return widths


def _total_divisor(table: ScoreTable, normalize: str, role: str) -> float:
    """The divisor of a table's group-summed scores: total item count, total summed P, or 1."""
    if normalize == "none":
        return 1.0
    total = float(table.normalizer(normalize).sum())
    if not total > 0:
        what = "item count" if normalize == "count" else "summed probability (prob_sums)"
        raise ValueError(f"the {role} table has total {what} {total}; cannot normalize by it")
    return total


def _group_divisors(table: ScoreTable, normalize: str, role: str, groups: Sequence[str]) -> torch.Tensor:
    """Divisors ``Tensor[len(groups)] float64`` of the named groups (rows of ``table``); refuses a zero divisor
    naming the group. ``"total"``: the table's total item count for every group."""
    if normalize == "total":
        div = table.counts.sum().to(torch.float64).expand(len(groups)).clone()
    else:
        div = table.normalizer(normalize)[[table.group_index(g) for g in groups]]
    for g, value in zip(groups, div.tolist()):
        if not value > 0:
            raise ValueError(f"the {role} table has {normalize} normalizer {value} for group {g!r}; cannot divide")
    return div


def _finite(site: str, scores: torch.Tensor, role: str) -> torch.Tensor:
    if not torch.isfinite(scores).all():
        raise ValueError(f"site {site!r}: the {role} scores hold NaN or inf")
    return scores


class _Layout:
    """Sites laid side by side in site order: global position <-> (site, index)."""

    def __init__(self, widths: Mapping[str, int]) -> None:
        self.sites = list(widths)
        self.widths = [widths[s] for s in self.sites]
        self.offsets = torch.tensor([0] + self.widths, dtype=torch.int64).cumsum(0)
        self.n = int(self.offsets[-1])

    def cat(self, per_site: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return torch.cat([per_site[s] for s in self.sites], dim=-1)

    def locate(self, positions: torch.Tensor) -> list[tuple[str, int]]:
        which = torch.searchsorted(self.offsets, positions, right=True) - 1
        return [(self.sites[w], int(p - self.offsets[w])) for w, p in zip(which.tolist(), positions.tolist())]


def _meta_model(neur: ScoreTable) -> str:
    return neur.metadata.get("model", "")


def _sources(**tables: ScoreTable | None) -> dict[str, str]:
    return {role: t.fingerprint() for role, t in tables.items() if t is not None}


# ------------------------------------------------------------------------------------------------ general
def general(
    neur: ScoreTable,
    ctrl: ScoreTable | None,
    crc: ScoreTable | None,
    t_mlp: float = 0.01,
    t_attn: float = 0.002,
    r_mlp: float = 0.01,
    r_attn: float = 0.01,
    *,
    normalize: str = "count",
    contrast: ScoreTable | None = None,
) -> NeuronSet:
    """Culture-general neurons.

    Score of a neuron: ``sum_g neur[g] / N_neur - sum_g ctrl[g] / N_ctrl`` where ``N`` is the table's total item
    count (``normalize="count"``, the paper's), its total summed P (``"prob"``) or 1 (``"none"``). Per kind (MLP
    gate neurons of all layers together; q/k/v neurons of all layers together) the top ``floor(n * t_kind)`` are
    taken, ``n`` being the number of neurons of that kind; then the top ``floor(n * r_kind)`` by the CountryRC score
    (``sum_g crc[g] / N_crc``, no control) are removed, without replacement.

    Args:
        neur: scores on the cultural items (e.g. BLEnD).
        ctrl: scores on the control items (same items with the culture removed); None: no subtraction.
        crc: scores on CountryRC (country-name recall); None: no removal.
        t_mlp, t_attn, r_mlp, r_attn: fractions in [0, 1].
        normalize: ``"count"`` | ``"prob"`` | ``"none"``.
        contrast: project extension, not in the paper: an extra table (e.g. scores on a general-ability set)
            subtracted like ``ctrl`` (normalized by its own total), so neurons that also drive generic ability
            rank lower.

    Returns:
        A NeuronSet (method ``"general"``), each neuron's score its contrast score.

    Raises:
        ValueError: tables with different sites/widths/models, a zero normalizer, a bad fraction.
    """
    for name, value in (("t_mlp", t_mlp), ("t_attn", t_attn), ("r_mlp", r_mlp), ("r_attn", r_attn)):
        _check_fraction(name, value)
    _check_normalize(normalize)
    widths = _check_tables(neur, {"ctrl": ctrl, "crc": crc, "contrast": contrast})

    subtract = [(ctrl, "ctrl"), (contrast, "contrast")]
    divisor = _total_divisor(neur, normalize, "neur")
    sub_divisors = {role: _total_divisor(t, normalize, role) for t, role in subtract if t is not None}
    crc_divisor = _total_divisor(crc, normalize, "crc") if crc is not None else None

    chosen: list[Neuron] = []
    for kind, t, r in ((MLP, t_mlp, r_mlp), (ATTN, t_attn, r_attn)):
        kind_widths = {s: w for s, w in widths.items() if parse_site_name(s)[1] == kind}
        if not kind_widths:
            continue
        layout = _Layout(kind_widths)
        score = {}
        for site in layout.sites:
            s = neur[site].sum(0) / divisor
            for table, role in subtract:
                if table is not None:
                    s = s - table[site].sum(0) / sub_divisors[role]
            score[site] = _finite(site, s, "contrast")
        flat = layout.cat(score)
        top = top_fraction(flat, t)
        if crc is not None:
            crc_flat = layout.cat({s: _finite(s, crc[s].sum(0) / crc_divisor, "crc") for s in layout.sites})
            removed = torch.zeros(layout.n, dtype=torch.bool)
            removed[top_fraction(crc_flat, r)] = True
            top = top[~removed[top]]
        for (site, index), value in zip(layout.locate(top), flat[top].tolist()):
            chosen.append(Neuron(site, index, value))

    params = dict(
        t_mlp=t_mlp, t_attn=t_attn, r_mlp=r_mlp, r_attn=r_attn, normalize=normalize,
        control=ctrl is not None, countryrc=crc is not None, contrast=contrast is not None,
    )
    return NeuronSet(
        chosen, method="general", params=params, model=_meta_model(neur),
        sources=_sources(neur=neur, ctrl=ctrl, crc=crc, contrast=contrast),
    )


# ----------------------------------------------------------------------------------------------- specific
def _group_scores(
    neur: ScoreTable, ctrl: ScoreTable | None, site: str, div: torch.Tensor, ctrl_rows, ctrl_div
) -> torch.Tensor:
    """``Tensor[G, N] float64``: ``neur[g]/N[g] - ctrl[g]/N_ctrl[g]`` for every group g of ``neur`` (``ctrl_rows``:
    the rows of ``ctrl`` holding those groups, ``ctrl_div`` their divisors, both in ``neur``'s group order)."""
    s = neur[site] / div[:, None]
    if ctrl is not None:
        s = s - ctrl[site][ctrl_rows] / ctrl_div[:, None]
    return _finite(site, s, "per-group contrast")


def specific(
    neur: ScoreTable,
    ctrl: ScoreTable | None,
    crc: ScoreTable | None,
    group: str,
    t: float = 0.003,
    r: float = 0.01,
    z_min: float | None = 0.5,
    *,
    normalize: str = "total",
) -> NeuronSet:
    """Culture-specific neurons of one group (country).

    Per-group score ``S[g] = neur[g] / N_neur[g] - ctrl[g] / N_ctrl[g]`` for every group ``g`` of ``neur``, with
    ``N[g]`` the group's item count (``normalize="count"``), its summed P (``"prob"``), 1 (``"none"``) or the
    table's total item count (``"total"``, what the reference code does, see the note). For the
    target ``group``: the top ``floor(n * t)`` of all neurons (MLP and attention pooled, ``n`` = all neurons), minus
    the top ``floor(n * r)`` by ``crc[group] / N_crc[group]`` (pooled), then only neurons whose z-score
    ``(S[group] - mean_g S[g]) / sd_g S[g]`` (population sd over all groups of ``neur``) is ``>= z_min``.

    Where the groups' scores are all equal the z-score is 0. Equality is judged up to rounding: an sd within
    ``4 * G * eps * max_g |S[g]|`` counts as 0, because the mean of G equal floats need not round back to them and a
    rounding-noise sd would otherwise give an arbitrary z-score.

    The default, ``normalize="total"``, is the paper's ``neur[g] / N_neur - ctrl[g] / N_ctrl`` with N the table's
    whole item count, as the reference code (``decide_culture_specific_neuron.py``) does. ``"count"`` divides by the
    group's own count (a per-country mean); it differs in ranking and z-scores only when groups differ in size.

    Args:
        neur, ctrl, crc: score tables; ``ctrl`` must hold every group of ``neur``; ``crc`` must hold ``group``.
            ``ctrl`` None: no subtraction; ``crc`` None: no removal.
        group: the target group.
        t, r: fractions in [0, 1].
        z_min: the z-score threshold; None: no z-score filter.
        normalize: ``"count"`` | ``"prob"`` | ``"none"`` | ``"total"``.

    Returns:
        NeuronSet (method ``"specific"``), each neuron's score ``S[group]``.

    Raises:
        KeyError: unknown ``group`` (listing the table's groups); ``ctrl`` or ``crc`` lacking a needed group.
        ValueError: tables with different sites/widths, a zero normalizer, a bad fraction.
    """
    _check_fraction("t", t)
    _check_fraction("r", r)
    bad_z = isinstance(z_min, bool) or not isinstance(z_min, (int, float)) or not math.isfinite(z_min)
    if z_min is not None and bad_z:
        raise ValueError(f"z_min must be a finite number, or None for no z-score filter; got {z_min!r}")
    _check_normalize(normalize, SPECIFIC_NORMALIZE)
    widths = _check_tables(neur, {"ctrl": ctrl, "crc": crc})
    target = neur.group_index(group)  # KeyError naming the group and listing the groups
    if crc is not None and group not in crc.groups:
        raise KeyError(f"the crc table lacks group {group!r}; it has {crc.groups}")

    div = _group_divisors(neur, normalize, "neur", neur.groups)
    ctrl_rows = ctrl_div = None
    if ctrl is not None:
        missing = [g for g in neur.groups if g not in ctrl.groups]
        if missing:
            raise KeyError(f"the ctrl table lacks group(s) {missing} of the neur table; it has {ctrl.groups}")
        ctrl_rows = torch.tensor([ctrl.group_index(g) for g in neur.groups], dtype=torch.int64)
        ctrl_div = _group_divisors(ctrl, normalize, "ctrl", neur.groups)

    layout = _Layout(widths)
    flat = layout.cat({s: _group_scores(neur, ctrl, s, div, ctrl_rows, ctrl_div)[target] for s in layout.sites})
    top = top_fraction(flat, t)

    if crc is not None:
        row = crc.group_index(group)
        crc_div = float(_group_divisors(crc, normalize, "crc", [group])[0])
        crc_flat = layout.cat({s: _finite(s, crc[s][row] / crc_div, "crc") for s in layout.sites})
        removed = torch.zeros(layout.n, dtype=torch.bool)
        removed[top_fraction(crc_flat, r)] = True
        top = top[~removed[top]]

    chosen: list[Neuron] = []
    located = layout.locate(top)
    by_site: dict[str, list[int]] = {}
    for site, index in located:
        by_site.setdefault(site, []).append(index)
    for site, indices in by_site.items():
        idx = torch.tensor(indices, dtype=torch.int64)
        s = _group_scores(neur, ctrl, site, div, ctrl_rows, ctrl_div)[:, idx]  # [G, k]
        mean = s.mean(0)
        sd = s.std(0, correction=0) if s.shape[0] > 1 else torch.zeros_like(mean)
        tol = 4 * s.shape[0] * torch.finfo(torch.float64).eps * s.abs().amax(0)
        flat_sd = sd <= tol
        z = torch.where(flat_sd, torch.zeros_like(mean), (s[target] - mean) / torch.where(flat_sd, 1.0, sd))
        for index, zi, value in zip(indices, z.tolist(), s[target].tolist()):
            if z_min is None or zi >= z_min:
                chosen.append(Neuron(site, index, value))

    params = dict(group=group, t=t, r=r, z_min=z_min, normalize=normalize,
                  control=ctrl is not None, countryrc=crc is not None)
    return NeuronSet(
        chosen, method="specific", params=params, model=_meta_model(neur),
        sources=_sources(neur=neur, ctrl=ctrl, crc=crc),
    )


# -------------------------------------------------------------------------------------- more surface sets
def remove_surface(
    ns: NeuronSet,
    table: ScoreTable,
    fractions: Mapping[str, float],
    *,
    normalize: str = "count",
    group: str | None = None,
    role: str = "surface",
) -> NeuronSet:
    """``ns`` without the neurons ranking in the top of another surface set's table (a recipe's second and later
    surface sets; the first one is ``general``'s / ``specific``'s ``crc``).

    ``group`` None (general neurons): per kind in ``fractions`` (``{"mlp": r, "attn": r}``; a kind left out is not
    filtered), the top ``floor(n_kind * r)`` of that kind by ``sum_g table[g] / N`` (``normalize`` as ``general``'s),
    as ``general`` removes CountryRC neurons. ``group`` given (specific neurons): the top ``floor(n * r)`` of all
    neurons pooled by ``table[group] / N[group]`` (``normalize`` as ``specific``'s), ``fractions`` holding one
    value under ``"all"``. Removing a second set's top after the first equals removing the union of the two tops.
    """
    widths = _check_tables(table, {})
    if group is None:
        _check_normalize(normalize)
        divisor = _total_divisor(table, normalize, role)
        parts = [(kind, {s: w for s, w in widths.items() if parse_site_name(s)[1] == kind}) for kind in fractions]
        scores = lambda site: table[site].sum(0) / divisor  # noqa: E731
    else:
        _check_normalize(normalize, SPECIFIC_NORMALIZE)
        row = table.group_index(group)
        div = float(_group_divisors(table, normalize, role, [group])[0])
        parts = [("all", dict(widths))]
        scores = lambda site: table[site][row] / div  # noqa: E731
    drop: set[tuple[str, int]] = set()
    for kind, kind_widths in parts:
        _check_fraction(f"{role} {kind}", fractions[kind])
        if not kind_widths:
            continue
        layout = _Layout(kind_widths)
        flat = layout.cat({s: _finite(s, scores(s), role) for s in layout.sites})
        drop.update(layout.locate(top_fraction(flat, fractions[kind])))
    kept = [n for n in ns if (n.site, n.index) not in drop]
    params = {**ns.params, "surfaces": [*ns.params.get("surfaces", []), role]}
    return NeuronSet(kept, method=ns.method, params=params, model=ns.model,
                     sources={**ns.sources, role: table.fingerprint()})


# ------------------------------------------------------------------------------------------------- random
MATCH = ("site", "kind", "none")


def random_like(
    neurons: NeuronSet,
    widths: nn.Module | ScoreTable | Mapping[str, int],
    seed: int,
    match: str = "site",
    *,
    exclude: NeuronSet | None = None,
) -> NeuronSet:
    """A random set the size of ``neurons``: a baseline for inhibition experiments.

    Args:
        neurons: the set to mimic.
        widths: the model's sites: a model (``sites.neuron_sites``), a ScoreTable or ``{site: width}``.
        seed: seeds a ``torch.Generator``; the same inputs and seed give the same set.
        match: ``"site"``: as many neurons per site as ``neurons`` has there; ``"kind"``: as many per kind, drawn
            over all sites of that kind; ``"none"``: ``len(neurons)`` drawn uniformly over all neurons of the model
            (the reference code's draw).
        exclude: neurons never drawn (e.g. the set itself, for a disjoint baseline).

    Returns:
        NeuronSet (method ``"random"``, scores 0.0, model and sources of ``neurons``).

    Raises:
        ValueError: ``neurons``/``exclude`` not fitting ``widths``, too few neurons left to draw from, bad match.
    """
    if not isinstance(neurons, NeuronSet):
        raise TypeError(f"neurons must be a NeuronSet, got {type(neurons).__name__}")
    if match not in MATCH:
        raise ValueError(f"unknown match {match!r}; expected one of {MATCH}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an int, got {seed!r}")
    all_widths = site_widths(widths)
    neurons.validate(all_widths)
    if exclude is not None:
        exclude.validate(all_widths)

    # Pools to draw from, each with how many to draw, in a fixed order (so a seed means one set).
    pools: list[tuple[str, dict[str, int], int]] = []
    if match == "site":
        for site, indices in neurons.by_site().items():
            pools.append((f"site {site!r}", {site: all_widths[site]}, len(indices)))
    elif match == "kind":
        counts = neurons.counts_by_kind()
        for kind in KINDS:
            if counts[kind]:
                kind_widths = {s: w for s, w in all_widths.items() if parse_site_name(s)[1] == kind}
                pools.append((f"kind {kind!r}", kind_widths, counts[kind]))
    elif len(neurons):
        pools.append(("the model", all_widths, len(neurons)))

    generator = torch.Generator().manual_seed(seed)
    drawn: list[Neuron] = []
    excluded = exclude.by_site() if exclude is not None else {}
    for name, pool_widths, k in pools:
        layout = _Layout(pool_widths)
        allowed = torch.ones(layout.n, dtype=torch.bool)
        for i, site in enumerate(layout.sites):
            if site in excluded:
                allowed[layout.offsets[i] + excluded[site]] = False
        candidates = allowed.nonzero().squeeze(1)
        if candidates.numel() < k:
            raise ValueError(f"{name}: cannot draw {k} neurons from {candidates.numel()} available")
        pick = candidates[torch.randperm(candidates.numel(), generator=generator)[:k]]
        drawn.extend(Neuron(site, index, 0.0) for site, index in layout.locate(pick))

    params = dict(seed=seed, match=match, like=neurons.method, size=len(neurons), exclude=exclude is not None)
    return NeuronSet(drawn, method="random", params=params, model=neurons.model, sources=neurons.sources)


__all__ = ["general", "specific", "random_like", "top_fraction", "NORMALIZE", "SPECIFIC_NORMALIZE", "MATCH"]
