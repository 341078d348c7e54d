"""Analyses of chosen neurons: cultural kinship (whose neurons hurt whom), where they sit, how often they fire.

- Kinship: inhibit group g's culture-specific neurons and measure every group's accuracy drop. Row g of the matrix
  is the drops caused by g's neurons; a group whose row peaks on its own column has neurons specific to it, and
  groups that hurt each other are "kin". ``kinship`` builds the matrix from drops; ``kinship_matrix`` runs the
  evaluations (once without inhibition, then once per group's set).
- Layer map: ``layer_counts`` counts neurons per layer and kind (for the layer histogram).
- Instance view: ``positive_share`` is the share of items on which each chosen neuron's item score is positive
  (item scores from ``culnig_ext.scoring.scorer.item_scores``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch
from scipy.stats import rankdata
from torch import nn

from culnig_ext.data.prompts import encode_choices
from culnig_ext.intervention.cloze_cache import evaluate_cloze_cached
from culnig_ext.intervention.evaluate import evaluate_encoded
from culnig_ext.intervention.inhibit import inhibit
from culnig_ext.models.sites import KINDS, parse_site_name


# --------------------------------------------------------------------------------------------------- kinship
@dataclass
class KinshipResult:
    """Accuracy drops of every evaluated group when each target group's neurons are inhibited.

    Attributes:
        targets: row labels: the groups whose neurons were inhibited.
        groups: column labels: the evaluated groups.
        matrix: ``float64 [T, G]``; ``matrix[i, j]`` = accuracy drop of group ``groups[j]`` when the neurons of
            ``targets[i]`` are inhibited (original accuracy minus inhibited accuracy; positive = worse).
        ranks: ``{target: {group: rank}}``, rank 1 = largest drop in that target's row (ties share the best rank).
    """

    targets: list[str]
    groups: list[str]
    matrix: np.ndarray
    ranks: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def self_rank(self) -> dict[str, int]:
        """``{target: rank of the target's own group in its row}`` for targets that are also evaluated groups."""
        return {t: self.ranks[t][t] for t in self.targets if t in self.ranks.get(t, {})}

    def to_dict(self) -> dict[str, Any]:
        return {
            "targets": list(self.targets),
            "groups": list(self.groups),
            "matrix": self.matrix.tolist(),
            "ranks": {t: dict(r) for t, r in self.ranks.items()},
        }

    @classmethod
    def from_dict(cls, obj: Mapping[str, Any]) -> "KinshipResult":
        drops = {t: dict(zip(obj["groups"], row)) for t, row in zip(obj["targets"], obj["matrix"])}
        return kinship(drops, groups=obj["groups"])


def kinship(
    drops: Mapping[str, Mapping[str, float]], *, groups: Sequence[str] | None = None
) -> KinshipResult:
    """Build the kinship matrix from ``{target: {group: accuracy drop}}``.

    Args:
        drops: per inhibited target group, the drop of each evaluated group.
        groups: column order (default: the first target's groups, in its order). Every target must give a drop
            for every column.

    Returns:
        ``KinshipResult`` with rows in ``drops`` order and per-row ranks (1 = largest drop).
    """
    targets = [str(t) for t in drops]
    if not targets:
        raise ValueError("kinship: no targets given")
    columns = [str(g) for g in (groups if groups is not None else drops[targets[0]])]
    if not columns:
        raise ValueError(f"kinship: target {targets[0]!r} has no groups")
    if len(set(columns)) != len(columns):
        raise ValueError(f"kinship: duplicate group names in {columns}")
    matrix = np.empty((len(targets), len(columns)), dtype=np.float64)
    ranks: dict[str, dict[str, int]] = {}
    for i, target in enumerate(targets):
        row = drops[target]
        missing = [g for g in columns if g not in row]
        extra = [g for g in row if g not in columns]
        if missing or extra:
            raise ValueError(
                f"kinship: target {target!r}: "
                + (f"no drop for group(s) {missing}" if missing else f"unexpected group(s) {extra}")
            )
        for j, g in enumerate(columns):
            value = float(row[g])
            if not np.isfinite(value):
                raise ValueError(f"kinship: target {target!r}, group {g!r}: drop is not finite ({value})")
            matrix[i, j] = value
        order = rankdata(-matrix[i], method="min").astype(int)
        ranks[target] = {g: int(r) for g, r in zip(columns, order)}
    return KinshipResult(targets, columns, matrix, ranks)


@dataclass
class KinshipRun:
    """What ``kinship_matrix`` ran: the matrix plus the evaluations behind it.

    Attributes:
        result: the ``KinshipResult``.
        baseline: the ``EvalResult`` without inhibition.
        inhibited: ``{target: EvalResult}`` with the target's neurons inhibited.
    """

    result: KinshipResult
    baseline: Any
    inhibited: dict[str, Any]


def kinship_matrix(
    model: nn.Module,
    tokenizer: Any,
    items: Iterable[Any],
    specific_sets: Mapping[str, Any],
    *,
    format: str = "letter",
    batch_size: int = 16,
    restrict_to_choices: bool = False,
    control: str | None = None,
    progress: bool = False,
) -> KinshipRun:
    """Evaluate once without inhibition, then with each group's neurons inhibited; drops per evaluated group.

    Args:
        model, tokenizer: as for ``culnig_ext.intervention.evaluate.evaluate``.
        items: ``MCItem`` objects; their groups are the columns (in order of first appearance).
        specific_sets: ``{target group: NeuronSet}`` (e.g. the culture-specific sets); the rows, in this order.
        format, batch_size, restrict_to_choices, control, progress: passed to ``evaluate``.

    Returns:
        ``KinshipRun(result, baseline, inhibited)``; ``result.matrix[i, j]`` = baseline accuracy of group j minus
        its accuracy with target i's neurons inhibited.
    """
    items = list(items)
    # Encode once: the prompts do not change between conditions.
    encodings = [encode_choices(item, tokenizer, format=format, control=control) for item in items]
    return kinship_matrix_encoded(
        model, items, encodings, specific_sets, format=format, batch_size=batch_size,
        restrict_to_choices=restrict_to_choices, control=control, progress=progress,
    )


def kinship_matrix_encoded(
    model: nn.Module,
    items: Sequence[Any],
    encodings: Sequence[Any],
    specific_sets: Mapping[str, Any],
    *,
    format: str = "letter",
    batch_size: int = 16,
    restrict_to_choices: bool = False,
    control: str | None = None,
    progress: bool = False,
    baseline: Any = None,
) -> KinshipRun:
    """``kinship_matrix`` on already-encoded items (``encodings[i]`` is item i's ``ChoiceEncoding``). The cloze
    format runs each prompt once (``intervention.cloze_cache``; the same option log-likelihoods up to float
    rounding). ``baseline``: the ``EvalResult`` of these items without inhibition when it is already known (it is
    then not evaluated again; its records must be these items, in order)."""
    if not specific_sets:
        raise ValueError("kinship_matrix: no neuron sets given")

    def run():
        if format == "cloze":
            return evaluate_cloze_cached(model, items, encodings, batch_size=batch_size, control=control,
                                         progress=progress)
        return evaluate_encoded(model, items, encodings, format=format, batch_size=batch_size,
                                restrict_to_choices=restrict_to_choices, control=control, progress=progress)

    if baseline is None:
        baseline = run()
    elif [r.id for r in baseline.records] != [getattr(it, "id", None) for it in items]:
        raise ValueError("kinship_matrix: the baseline's records are not the given items (in order)")
    base = baseline.per_group
    inhibited = {}
    drops = {}
    for target, neurons in specific_sets.items():
        with inhibit(model, neurons):
            res = run()
        inhibited[str(target)] = res
        drops[str(target)] = {g: base[g] - res.per_group[g] for g in base}
    return KinshipRun(kinship(drops, groups=list(base)), baseline, inhibited)


# ------------------------------------------------------------------------------------------------ layer map
def _pairs(neurons: Any) -> Iterable[tuple[str, int]]:
    if hasattr(neurons, "by_site") and callable(neurons.by_site):
        neurons = neurons.by_site()
    if isinstance(neurons, Mapping):
        for site, indices in neurons.items():
            idx = indices.tolist() if hasattr(indices, "tolist") else list(indices)
            for i in dict.fromkeys(int(x) for x in idx):  # a neuron counts once
                yield str(site), i
        return
    for n in neurons:
        if hasattr(n, "site"):
            yield n.site, int(n.index)
        else:
            yield str(n[0]), int(n[1])


def layer_counts(neurons: Any, num_layers: int) -> dict[str, list[int]]:
    """Neurons per layer and kind: ``{"mlp": [count per layer], "attn": [count per layer]}``.

    Args:
        neurons: a ``NeuronSet``, ``{site: indices}``, or an iterable of ``Neuron`` / ``(site, index)``.
        num_layers: the model's number of decoder layers (the lists' length).

    Raises:
        ValueError: a site whose layer is outside ``[0, num_layers)``, naming the site.
    """
    if not isinstance(num_layers, int) or num_layers < 1:
        raise ValueError(f"num_layers must be a positive integer, got {num_layers!r}")
    counts = {kind: [0] * num_layers for kind in KINDS}
    for site, _ in _pairs(neurons):
        layer, kind = parse_site_name(site)
        if layer >= num_layers:
            raise ValueError(f"site {site!r}: layer {layer} outside [0, {num_layers})")
        counts[kind][layer] += 1
    return counts


# -------------------------------------------------------------------------------------------- instance view
def positive_share(item_scores: torch.Tensor) -> torch.Tensor:
    """Share of items on which each neuron's item score is positive.

    Args:
        item_scores: ``Tensor[I, K]`` (any float dtype), per item and chosen neuron (``scorer.item_scores``).

    Returns:
        ``Tensor[K] float64`` in [0, 1].
    """
    scores = torch.as_tensor(item_scores)
    if scores.dim() != 2:
        raise ValueError(f"item_scores must be [items, neurons], got shape {tuple(scores.shape)}")
    if scores.shape[0] == 0:
        raise ValueError("item_scores has no items")
    bad = torch.isnan(scores)
    if bad.any():
        item, neuron = (int(x) for x in bad.nonzero()[0])
        raise ValueError(f"item_scores[{item}, {neuron}] is nan")
    return (scores > 0).to(torch.float64).mean(dim=0)
