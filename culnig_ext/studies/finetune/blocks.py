"""Blocks of a decoder LM ranked by how many culture neurons they hold, and the picks the module study trains.

A *block* is what the paper fine-tunes as one unit (CULNIG's ``train/config.yaml`` lists them with their counts):

- an MLP block ``layers.{i}.mlp``: the gate, up and down projections of layer i (``gate_up_proj`` + ``down_proj``
  for fused models), counted by the neurons of a ``NeuronSet`` in its gate site;
- an attention block ``layers.{i}.self_attn``: q, k, v and o projections (``qkv_proj`` + ``o_proj`` when fused),
  counted by the set's q/k/v neurons.

``rank_modules(model, neurons)`` lists every block with its count, density, parameter count and the full names of
its linear modules; ``pick_modules(ranking, budget, end, seed)`` fills a parameter budget (a share of the decoder
layers' parameters) from the top (most neurons), the bottom (fewest) or at random, breaking ties by a seeded,
recorded rule; ``target_modules(blocks)`` gives the module names PEFT's ``LoraConfig(target_modules=...)`` takes.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
from torch import nn

from culnig_ext.selection.neurons import NeuronSet
from culnig_ext.models.sites import ATTN, KINDS, MLP, decoder_layers, neuron_sites
from culnig_ext.studies.finetune.settings import BY, ENDS


# Linear modules of each block kind, unfused names first; a fused model has the alternatives.
_BLOCK_LINEARS = {
    MLP: ("gate_proj", "up_proj", "gate_up_proj", "down_proj"),
    ATTN: ("q_proj", "k_proj", "v_proj", "qkv_proj", "o_proj"),
}
_BLOCK_ATTR = {MLP: "mlp", ATTN: "self_attn"}

TIE_RULE = (
    "blocks with equal {by} are ordered by a random permutation of the ranking's positions drawn with "
    "numpy.random.default_rng({seed}).permutation(n_blocks) (lower draw first); 'random' orders all blocks by "
    "another permutation, numpy.random.default_rng([{seed}, 1]).permutation(n_blocks), so that it does not share "
    "the bottom end's order of the count-0 blocks"
)


@dataclass(frozen=True)
class ModuleBlock:
    """One trainable block of a decoder layer.

    Attributes:
        name: ``layers.{i}.mlp`` or ``layers.{i}.self_attn`` (the layer index inside the decoder).
        layer: decoder layer index.
        kind: ``"mlp"`` or ``"attn"``.
        count: neurons of the ranking's ``NeuronSet`` in the block (gate neurons / q,k,v neurons).
        neurons: neurons of the block's kind in the block (gate width / q+k+v widths).
        density: ``count / neurons``.
        params: parameters of the block's linear modules (weights and biases).
        linear_names: full names of those linear modules inside the model (``model.layers.3.mlp.up_proj`` ...),
            the names PEFT's ``target_modules`` matches exactly.
    """

    name: str
    layer: int
    kind: str
    count: int
    neurons: int
    density: float
    params: int
    linear_names: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["linear_names"] = list(self.linear_names)
        return out


def decoder_param_count(model: nn.Module) -> int:
    """Parameters of the decoder layers (every block of ``sites.decoder_layers``: projections and norms), the
    denominator of a pick's budget; embeddings, the final norm and the output head are not counted."""
    return sum(p.numel() for p in decoder_layers(model).parameters())


def _linear_modules(model: nn.Module, block: nn.Module, kind: str, layer: int) -> list[tuple[str, nn.Linear]]:
    full_names = {id(module): name for name, module in model.named_modules()}
    found = []
    for attr in _BLOCK_LINEARS[kind]:
        module = getattr(block, attr, None)
        if isinstance(module, nn.Linear):
            found.append((full_names[id(module)], module))
    if not found:
        raise ValueError(f"layer {layer}: no linear modules found in its {_BLOCK_ATTR[kind]} block "
                         f"(looked for {', '.join(_BLOCK_LINEARS[kind])})")
    return found


def rank_modules(model: nn.Module, neurons: NeuronSet, *, by: str = "count") -> list[ModuleBlock]:
    """Every MLP and attention block of ``model`` with its neuron count, most neurons first.

    Args:
        model: a Hugging Face decoder LM (any architecture ``sites.neuron_sites`` maps).
        neurons: e.g. the culture-general neurons; validated against the model.
        by: ``"count"`` (the paper's ranking) or ``"density"`` (count per neuron of the block's kind).

    Returns:
        Blocks sorted by ``by`` descending; ties in model order (layer, then MLP before attention). The order of
        ties is not what ``pick_modules`` uses: it breaks ties by its own seeded rule.
    """
    if by not in BY:
        raise ValueError(f"by must be one of {BY}, got {by!r}")
    if not isinstance(neurons, NeuronSet):
        raise TypeError(f"neurons must be a NeuronSet, got {type(neurons).__name__}")
    neurons.validate(model)
    counts = {(layer, kind): n for (layer, kind), n in neurons.counts_by_layer().items()}
    widths: dict[tuple[int, str], int] = {}
    for site in neuron_sites(model):
        key = (site.layer, site.kind)
        widths[key] = widths.get(key, 0) + site.width
    blocks = []
    for layer, block in enumerate(decoder_layers(model)):
        for kind in KINDS:
            linears = _linear_modules(model, getattr(block, _BLOCK_ATTR[kind]), kind, layer)
            count = counts.get((layer, kind), 0)
            width = widths[(layer, kind)]
            blocks.append(ModuleBlock(
                name=f"layers.{layer}.{_BLOCK_ATTR[kind]}", layer=layer, kind=kind, count=count, neurons=width,
                density=count / width, params=sum(p.numel() for _, m in linears for p in m.parameters()),
                linear_names=tuple(name for name, _ in linears),
            ))
    key = (lambda b: -b.count) if by == "count" else (lambda b: -b.density)
    return sorted(blocks, key=key)  # stable: ties stay in model order


@dataclass(frozen=True)
class ModulePick:
    """The blocks one end of the study trains, and how they were chosen.

    Iterates the picked blocks in pick order. ``share`` is ``sum(block.params) / total_params``; it never exceeds
    ``budget``. ``order`` is the full order the budget was filled from (block names), ``tie_rule`` the rule that
    ordered equal ranks.
    """

    end: str
    budget: float
    seed: int
    by: str
    blocks: tuple[ModuleBlock, ...]
    total_params: int
    order: tuple[str, ...]
    tie_rule: str
    skipped: tuple[str, ...] = field(default=())

    def __iter__(self) -> Iterator[ModuleBlock]:
        return iter(self.blocks)

    def __len__(self) -> int:
        return len(self.blocks)

    @property
    def params(self) -> int:
        return sum(b.params for b in self.blocks)

    @property
    def share(self) -> float:
        return self.params / self.total_params

    @property
    def names(self) -> list[str]:
        return [b.name for b in self.blocks]

    def to_dict(self) -> dict[str, Any]:
        return {
            "end": self.end, "budget": self.budget, "seed": self.seed, "by": self.by, "share": self.share,
            "params": self.params, "total_params": self.total_params, "tie_rule": self.tie_rule,
            "order": list(self.order), "skipped": list(self.skipped), "blocks": [b.to_dict() for b in self.blocks],
        }


def pick_modules(
    ranking: Sequence[ModuleBlock],
    budget: float = 0.10,
    end: str = "top",
    seed: int = 0,
    *,
    total_params: int | None = None,
    by: str = "count",
) -> ModulePick:
    """Fill a parameter budget with blocks from one end of a ranking.

    The blocks are ordered (``top``: most neurons first; ``bottom``: fewest first; ``random``: a seeded
    permutation; ties by ``TIE_RULE``) and taken greedily: a block is added when it still fits the budget, a block
    that does not fit is skipped (recorded) and the next one tried, so the pick's share never exceeds ``budget``.

    Args:
        ranking: ``rank_modules``' output (any order; it is re-sorted here).
        budget: share of ``total_params`` (default: the decoder layers' parameters, ``decoder_param_count``) in
            (0, 1]; the paper trains about 10%.
        end: ``"top"``, ``"bottom"`` or ``"random"``.
        seed: seed of the tie-breaking permutation (and of the random end).
        total_params: the budget's denominator; required (pass ``decoder_param_count(model)``).
        by: ``"count"`` or ``"density"``, the rank used for top/bottom.

    Raises:
        ValueError: for a bad end/budget, an empty ranking, or a budget smaller than every block.
    """
    if end not in ENDS:
        raise ValueError(f"end must be one of {ENDS}, got {end!r}")
    if by not in BY:
        raise ValueError(f"by must be one of {BY}, got {by!r}")
    if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not 0.0 < budget <= 1.0:
        raise ValueError(f"budget must be a share of the decoder's parameters in (0, 1], got {budget!r}")
    blocks = list(ranking)
    if not blocks:
        raise ValueError("the ranking holds no blocks")
    for i, b in enumerate(blocks):
        if not isinstance(b, ModuleBlock):
            raise TypeError(f"ranking[{i}]: expected a ModuleBlock, got {type(b).__name__}")
    names = [b.name for b in blocks]
    if len(set(names)) != len(names):
        raise ValueError("the ranking names a block twice")
    if total_params is None:
        raise ValueError("pass total_params (decoder_param_count(model)): the budget is a share of it")
    if total_params < sum(b.params for b in blocks):
        raise ValueError(f"total_params {total_params} is below the blocks' own parameters "
                         f"({sum(b.params for b in blocks)})")
    # The tie-break draw is over the blocks in model order, so it does not depend on how the ranking was sorted.
    blocks.sort(key=lambda b: (b.layer, KINDS.index(b.kind)))
    draw = np.random.default_rng(seed).permutation(len(blocks))
    rank = [float(b.count) if by == "count" else b.density for b in blocks]
    positions = range(len(blocks))
    if end == "top":
        order = sorted(positions, key=lambda i: (-rank[i], draw[i]))
    elif end == "bottom":
        order = sorted(positions, key=lambda i: (rank[i], draw[i]))
    else:
        other = np.random.default_rng([seed, 1]).permutation(len(blocks))
        order = sorted(positions, key=lambda i: other[i])
    limit = budget * total_params
    picked, skipped, used = [], [], 0
    for i in order:
        if used + blocks[i].params <= limit:
            picked.append(blocks[i])
            used += blocks[i].params
        else:
            skipped.append(blocks[i].name)
    if not picked:
        smallest = min(b.params for b in blocks)
        raise ValueError(f"budget {budget:g} of {total_params} parameters ({limit:.0f}) is smaller than the "
                         f"smallest block ({smallest} parameters)")
    return ModulePick(
        end=end, budget=float(budget), seed=int(seed), by=by, blocks=tuple(picked), total_params=int(total_params),
        order=tuple(blocks[i].name for i in order), tie_rule=TIE_RULE.format(by=by, seed=seed),
        skipped=tuple(skipped),
    )


def target_modules(blocks: Iterable[ModuleBlock]) -> list[str]:
    """The full names of the blocks' linear modules (``model.layers.3.mlp.gate_proj`` ...), in block order: PEFT's
    ``LoraConfig(target_modules=...)`` matches them exactly, so no other module (e.g. a vision tower's layer of
    the same short name) is adapted."""
    out: list[str] = []
    for i, b in enumerate(blocks):
        if not isinstance(b, ModuleBlock):
            raise TypeError(f"blocks[{i}]: expected a ModuleBlock, got {type(b).__name__}")
        out.extend(b.linear_names)
    if len(set(out)) != len(out):
        raise ValueError("a module is named by two blocks")
    return out


def layer_picks(pick: ModulePick, num_layers: int) -> dict[str, list[int]]:
    """``{"mlp": [0/1] * L, "attn": [0/1] * L}``: which layers' blocks the pick trains (for the layer plot)."""
    out = {kind: [0] * num_layers for kind in KINDS}
    for b in pick:
        out[b.kind][b.layer] = 1
    return out


__all__ = [
    "BY", "ENDS", "ModuleBlock", "ModulePick", "TIE_RULE", "decoder_param_count", "layer_picks", "pick_modules",
    "rank_modules", "target_modules",
]
