"""LAPE beside CULNIG: activation probability per neuron and group, and its entropy-based selection.

LAPE (Tang et al. 2024, "Language-Specific Neurons: The Key to Multilingual Capabilities in LLMs") finds neurons
by how often they fire, not by what they contribute to the answer: a neuron's activation probability for group k is
the share of group k's tokens on which it is active (its pre-activation, the gate, is > 0, i.e. ``act(gate) > 0``
for SiLU/GELU/ReLU). CULNIG's paper argues that gradient attribution finds other, more causal neurons; this module
lets a user check that on the same items (``culnig compare``).

``activation_probability`` reads the same items as ``culnig_ext.score`` (every real token the model is fed:
prompt and teacher-forced answer but the last) and returns a ``ScoreTable`` of the same shape and file format:
``table[site][g, n]`` = number of group-g tokens on which neuron n is active, and ``prob_sums[g]`` = group g's token
count, so ``table[site] / table.normalizer("prob")[:, None]`` is the activation probability and ``merge`` of
shards stays exact. Mixture-of-experts gates count only the tokens routed to their expert (those tokens are also
their denominator's share: an expert's probability is over its routed tokens).

``select`` is LAPE's selection as in the authors' ``identify.py``: normalise each neuron's probabilities over
groups, take their entropy, drop neurons with no group above the ``filter_rate`` quantile of all probabilities,
keep the ``top_rate`` share of lowest entropy, and give each group the kept neurons whose probability for it
exceeds the ``activation_bar_ratio`` quantile. LAPE is defined on MLP neurons; ``kinds`` can widen it.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import torch
from torch import nn

from culnig_ext._utils.progress import bar as progress_bar
from culnig_ext.models import moe
from culnig_ext.data.batching import length_sorted_batches, left_pad, pad_id, takes_logits_to_keep
from culnig_ext.data.items import as_score_items, group_names
from culnig_ext.selection.neurons import Neuron, NeuronSet, site_key
from culnig_ext.scoring.scorer import ItemLike, dataset_fingerprint, frozen, table_provenance
from culnig_ext.models.sites import KINDS, MLP, Site, parse_site_name, select_sites
from culnig_ext.scoring.table import ScoreTable

METHOD = "activation_probability"


def activation_probability(
    model: nn.Module,
    items: Iterable[ItemLike],
    *,
    batch_size: int = 16,
    sites: Sequence[str] | None = None,
    groups: Sequence[str] | None = None,
    progress: bool = True,
) -> ScoreTable:
    """Active-token counts per neuron and group (see the module docstring): one forward pass per batch, no backward.

    Args:
        model, items, batch_size, sites, groups, progress: as in ``culnig_ext.score``.

    Returns:
        A ``ScoreTable``: ``table[site] = Tensor[G, N] float64`` active-token counts; ``prob_sums`` = ``Tensor[G]``
        tokens per group; ``counts`` = items per group; ``metadata["method"] = "activation_probability"``.
    """
    checked = as_score_items(items)
    chosen = select_sites(model, list(sites) if sites is not None else None)
    names = list(groups) if groups is not None else group_names(checked)
    rows = {g: i for i, g in enumerate(names)}
    unknown = sorted({it.group for it in checked} - set(rows))
    if unknown:
        raise ValueError(f"items have group(s) {unknown} not in groups={names}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    g = len(names)
    active = {s.name: torch.zeros(g, s.width, dtype=torch.float64) for s in chosen}
    expert_tokens = {s.name: torch.zeros(g, dtype=torch.float64) for s in chosen if s.expert is not None}
    counts = torch.zeros(g, dtype=torch.int64)
    tokens = torch.zeros(g, dtype=torch.float64)
    state: dict[str, torch.Tensor] = {}

    def add(site: Site, positive: torch.Tensor, mask: torch.Tensor) -> None:
        # positive [B, T, N] bool, mask [B, T] bool -> per group: active real tokens
        per_item = (positive & mask[:, :, None]).sum(1).to("cpu", torch.float64)
        active[site.name].index_add_(0, state["group"], per_item)

    def dense_hook(sites_here: list[Site]):
        def hook(module, args, output):
            mask = state["mask"].to(output.device)
            out = output if output.dim() == 3 else output.reshape(*mask.shape, -1)  # OPT: [B * T, N]
            for site in sites_here:
                add(site, site.view(out) > 0, mask)

        return hook

    def expert_tap(by_expert: dict[int, Site]):
        def tap(expert: int, gate_up: torch.Tensor, token_idx: torch.Tensor, token_idx_host: torch.Tensor) -> None:
            site = by_expert.get(expert)
            if site is None:
                return None
            mask = state["mask"].to(gate_up.device)
            b, t = mask.shape
            routed = torch.zeros(b * t, dtype=torch.bool, device=gate_up.device)
            routed[token_idx] = True
            routed = routed.view(b, t) & mask
            positive = moe.scatter_rows((site.view(gate_up) > 0).to(gate_up.dtype), token_idx, b, t) > 0
            add(site, positive, routed)
            expert_tokens[site.name].index_add_(0, state["group"], routed.sum(1).to("cpu", torch.float64))
            return None

        return tap

    by_module: dict[int, list[Site]] = {}
    for site in chosen:
        by_module.setdefault(id(site.module), []).append(site)
    handles = []
    device = model.get_input_embeddings().weight.device
    keep = {"logits_to_keep": 1} if takes_logits_to_keep(model) else {}
    bar = progress_bar(total=len(checked), desc="activation probability", unit="item", disable=not progress,
                       dynamic_ncols=True)
    with frozen(model), torch.no_grad():
        try:
            for sites_here in by_module.values():
                if sites_here[0].expert is not None:
                    handles.append(moe.tap(sites_here[0].module, expert_tap({s.expert: s for s in sites_here})))
                else:
                    handles.append(sites_here[0].module.register_forward_hook(dense_hook(sites_here)))
            for positions in length_sorted_batches([len(it.fed_ids) for it in checked], batch_size):
                ids, mask, position_ids = left_pad([checked[i].fed_ids for i in positions], pad_id(model))
                state["mask"] = mask.bool()
                state["group"] = torch.tensor([rows[checked[i].group] for i in positions], dtype=torch.int64)
                model(input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=position_ids.to(device),
                      use_cache=False, **keep)
                counts.index_add_(0, state["group"], torch.ones(len(positions), dtype=torch.int64))
                tokens.index_add_(0, state["group"], mask.sum(1).to(torch.float64))
                bar.update(len(positions))
        finally:
            for handle in handles:
                handle.remove()
            bar.close()
    if expert_tokens:
        # An expert's probability is over the tokens routed to it: rescale its counts to the group's token count,
        # so that dividing by prob_sums (tokens per group) gives active / routed.
        for name, routed in expert_tokens.items():
            scale = torch.where(routed > 0, tokens / routed.clamp(min=1), torch.zeros_like(routed))
            active[name] *= scale[:, None]
    metadata = table_provenance(model, None)
    metadata.update(dataset_fingerprint=dataset_fingerprint(checked), clamp_min="", method=METHOD)
    return ScoreTable(names, counts, active, tokens, metadata)


def probabilities(table: ScoreTable, site: str) -> torch.Tensor:
    """Activation probability ``Tensor[G, N] float64`` of one site from an ``activation_probability`` table."""
    if table.metadata.get("method") != METHOD:
        raise ValueError(f"not an activation-probability table (method={table.metadata.get('method')!r})")
    tokens = table.prob_sums
    if bool((tokens <= 0).any()):
        empty = [g for g, n in zip(table.groups, tokens.tolist()) if n <= 0]
        raise ValueError(f"group(s) {empty} have no tokens: no activation probability")
    return table[site] / tokens[:, None]


def _kth(values: torch.Tensor, ratio: float) -> float:
    """``values.kthvalue(round(len * ratio))`` as in identify.py (k at least 1)."""
    k = min(max(1, round(values.numel() * ratio)), values.numel())
    return float(values.kthvalue(k).values)


def select(
    table: ScoreTable,
    *,
    top_rate: float = 0.01,
    filter_rate: float = 0.95,
    activation_bar_ratio: float = 0.95,
    kinds: Sequence[str] = (MLP,),
) -> dict[str, NeuronSet]:
    """LAPE's group-specific neurons: ``{group: NeuronSet}`` (scores: the neuron's activation probability there).

    Args:
        table: an ``activation_probability`` table with at least two groups.
        top_rate: share of all neurons (of ``kinds``) kept by lowest entropy (the paper's 1%).
        filter_rate: a neuron is dropped unless some group's probability exceeds this quantile of all probabilities.
        activation_bar_ratio: a kept neuron belongs to group k when its probability for k exceeds this quantile.
        kinds: which neurons LAPE ranks (MLP only, as the paper does, by default).
    """
    for name, value in (("top_rate", top_rate), ("filter_rate", filter_rate),
                        ("activation_bar_ratio", activation_bar_ratio)):
        if not 0.0 < float(value) <= 1.0:
            raise ValueError(f"{name} must be in (0, 1], got {value!r}")
    unknown = set(kinds) - set(KINDS)
    if unknown or not kinds:
        raise ValueError(f"kinds must be a non-empty subset of {KINDS}, got {list(kinds)}")
    if len(table.groups) < 2:
        raise ValueError(f"LAPE needs at least two groups to compare, the table has {table.groups}")
    names = sorted((s for s in table.sites if parse_site_name(s)[1] in kinds), key=site_key)
    if not names:
        raise ValueError(f"the table has no sites of kind(s) {list(kinds)}")
    probs = torch.cat([probabilities(table, s) for s in names], dim=1)  # [G, M]
    owner = [(s, i) for s in names for i in range(table[s].shape[1])]
    normed = probs / probs.sum(0, keepdim=True)
    normed = torch.nan_to_num(normed, nan=0.0)
    logs = torch.where(normed > 0, normed.log(), torch.zeros_like(normed))
    entropy = -(normed * logs).sum(0)
    flat = probs.flatten()
    top_prob = _kth(flat, filter_rate)
    entropy[(probs > top_prob).sum(0) == 0] = float("inf")
    n_keep = round(entropy.numel() * top_rate)
    order = torch.topk(entropy, n_keep, largest=False).indices
    order = order[torch.isfinite(entropy[order])]
    bar = _kth(flat, activation_bar_ratio)
    params = dict(top_rate=top_rate, filter_rate=filter_rate, activation_bar_ratio=activation_bar_ratio,
                  kinds=list(kinds), top_prob=top_prob, activation_bar=bar)
    out: dict[str, NeuronSet] = {}
    for row, group in enumerate(table.groups):
        chosen = order[probs[row, order] > bar].tolist()
        neurons = [Neuron(owner[m][0], owner[m][1], float(probs[row, m])) for m in chosen]
        out[group] = NeuronSet(neurons, method="lape", params=dict(params, group=group),
                               model=table.metadata.get("model", ""), sources={"activation": table.fingerprint()})
    return out
