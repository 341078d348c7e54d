"""Score every neuron of a decoder LLM over a dataset: one forward and one backward per batch.

For an item with prompt x and gold answer y, a neuron's item score is ``max over the item's real tokens t of
a_t * dP(y|x)/da_t``; the dataset score of a group is ``sum over its items of P(y|x) * item score``.

How it stays small and fast:
- Weights are frozen for the call and the embedding output is the only tensor made to require grad, so the
  backward pass computes activation gradients only: no weight-gradient matmuls, nothing written to ``.grad``.
- A forward hook on each site's module registers a gradient hook on the module's output. When the backward pass
  reaches that output, the fused op (``culnig_ext.ops``) multiplies activation and gradient, takes the running max
  over real tokens and adds ``P * max`` into the site's ``[G, N]`` float64 accumulator, and the activation is
  released. No ``[B, T, N]`` product is ever materialised.
- Logits are computed only at the positions that predict a target token (``logits_to_keep``), never ``[B, T, V]``.
- Items are sorted by length and left-padded, with explicit ``position_ids``, so padding changes nothing but
  float rounding: results do not depend on batch size or order.
"""
from __future__ import annotations

import hashlib
import logging
import os
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from . import checkpointing, moe, ops, ops_reference
from .batching import left_pad, length_sorted_batches, pad_id, takes_logits_to_keep, vocab_size
from .items import ScoreItem, as_score_items, group_names
from .sites import Site, select_sites
from .table import ScoreTable
from .wrapped import check_differentiable

ItemLike = ScoreItem | Mapping[str, Any]
log = logging.getLogger("culnig")


# --------------------------------------------------------------------------------------------------- batching
@dataclass
class Batch:
    """A left-padded batch on the embedding's device.

    Attributes:
        positions: indices of the batch's items in the validated item list.
        input_ids, attention_mask, position_ids: ``[B, T]`` int64.
        targets: ``[B, L]`` int64 target ids right-aligned (L = longest target), 0 where ``target_mask`` is False.
        target_mask: ``[B, L]`` bool.
        group: ``[B]`` int64 group row of each item.
        num_tokens: real (unpadded) tokens in the batch.
    """

    positions: list[int]
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    targets: torch.Tensor
    target_mask: torch.Tensor
    group: torch.Tensor
    num_tokens: int


def make_batches(
    items: Sequence[ScoreItem], group_rows: Mapping[str, int], batch_size: int, device: torch.device, pad: int
) -> Iterator[Batch]:
    """Yield batches of length-sorted items (stable sort, so ties keep input order), left-padded."""
    for positions in length_sorted_batches([len(item.fed_ids) for item in items], batch_size):
        ids, mask, position_ids = left_pad([items[i].fed_ids for i in positions], pad)
        n_targets = max(len(items[i].target_ids) for i in positions)
        targets = torch.zeros((len(positions), n_targets), dtype=torch.int64)
        target_mask = torch.zeros((len(positions), n_targets), dtype=torch.bool)
        for row, i in enumerate(positions):
            t = items[i].target_ids
            targets[row, n_targets - len(t) :] = torch.tensor(t, dtype=torch.int64)
            target_mask[row, n_targets - len(t) :] = True
        group = torch.tensor([group_rows[items[i].group] for i in positions], dtype=torch.int64)
        yield Batch(
            positions,
            ids.to(device),
            mask.to(device),
            position_ids.to(device),
            targets,
            target_mask,
            group,
            int(mask.sum()),
        )


# ------------------------------------------------------------------------------------------- model plumbing
@contextmanager
def frozen(model: nn.Module) -> Iterator[None]:
    """Eval mode and ``requires_grad=False`` on every parameter for the duration; both restored on exit."""
    was_training = model.training
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        model.eval()
        for p, _ in flags:
            p.requires_grad_(False)
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        model.train(was_training)


def target_log_probs(logits: torch.Tensor, batch: Batch) -> torch.Tensor:
    """``log P(y|x)`` per item, ``[B]`` float32 (float64 for a float64 model), from ``logits [B, L, V]`` at the L
    target-predicting positions."""
    targets = batch.targets.to(logits.device)
    mask = batch.target_mask.to(logits.device)
    log_probs = torch.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=-1)
    picked = log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return (picked * mask).sum(dim=1)


# ----------------------------------------------------------------------------------------------- the engine
GradCallback = Callable[[Site, torch.Tensor, torch.Tensor, "BatchState"], None]


@dataclass
class BatchState:
    """What the gradient hooks need about the current batch, moved lazily to each site's device.

    token_index [B, T] int32 / token_count [B] int32: the batch's compact token list (``ops.token_list``), built
    and checked once per batch on the host by :meth:`for_batch` and shared by every site, so the ops need no
    host synchronisation per site.
    """

    token_mask: torch.Tensor  # [B, T] bool
    group: torch.Tensor  # [B] int64
    weight: torch.Tensor | None = None  # [B] float32, P(y|x), known after the forward pass
    token_index: torch.Tensor | None = None  # [B, T] int32
    token_count: torch.Tensor | None = None  # [B] int32
    rows: torch.Tensor | None = None  # [B'] int64: for a sub-batch (MoE expert), its rows in the whole batch
    _cache: dict = field(default_factory=dict)

    @classmethod
    def for_batch(cls, attention_mask: torch.Tensor, group: torch.Tensor, n_groups: int) -> "BatchState":
        """Check the batch once on the host (every item has a token, every group row < n_groups) and build its
        token list. ``attention_mask [B, T]`` (any device: one copy to the host), ``group [B]`` int64 on the CPU."""
        host_mask = attention_mask.detach().to("cpu", torch.bool)
        index, count = ops.token_list(host_mask)
        ops_reference.check_group_range("culnig.score", group.cpu(), n_groups)
        return cls(token_mask=attention_mask.bool(), group=group, token_index=index, token_count=count)

    def subset(self, rows: torch.Tensor, token_mask: torch.Tensor) -> "BatchState":
        """The state of the batch rows ``rows [B'] int64`` with another ``token_mask [B', T]`` (an MoE expert's
        routed tokens; every row has one), its token list built on the host."""
        rows_cpu = rows.cpu()
        index, count = ops.token_list(token_mask.detach().to("cpu", torch.bool))
        return BatchState(
            token_mask=token_mask,
            group=self.group[rows_cpu.to(self.group.device)],
            weight=None if self.weight is None else self.weight[rows.to(self.weight.device)],
            token_index=index,
            token_count=count,
            rows=rows_cpu,
        )

    def on(self, name: str, device: torch.device) -> torch.Tensor:
        key = (name, device)
        if key not in self._cache:
            self._cache[key] = getattr(self, name).to(device, non_blocking=True)
        return self._cache[key]

    def tokens_on(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """``(token_index, token_count)`` on ``device``."""
        return self.on("token_index", device), self.on("token_count", device)


class _Hooks:
    """Forward hooks on site modules that attach the gradient callback; removed by ``close`` (always called)."""

    def __init__(self, model: nn.Module, sites: Sequence[Site], on_grad: GradCallback) -> None:
        self.state: BatchState | None = None
        self.embeds: torch.Tensor | None = None
        self.recomputed: dict = {}
        self.handles = []
        by_module: dict[int, list[Site]] = {}
        modules: dict[int, nn.Module] = {}
        for site in sites:
            by_module.setdefault(id(site.module), []).append(site)
            modules[id(site.module)] = site.module
        paths = {id(m): name for name, m in model.named_modules()}
        try:
            embedding = model.get_input_embeddings()
            self.handles.append(embedding.register_forward_hook(self._embedding_hook))
            for key, module in modules.items():
                if by_module[key][0].expert is not None:
                    self.handles.append(moe.tap(module, self._expert_tap(by_module[key], on_grad)))
                else:
                    hook = self._site_hook(by_module[key], on_grad, paths.get(key, type(module).__name__))
                    self.handles.append(module.register_forward_hook(hook))
        except BaseException:
            self.close()
            raise

    def _embedding_hook(self, module, args, output):
        # The only tensor that requires grad: the backward pass then computes activation gradients only.
        leaf = output.detach().requires_grad_(True)
        self.embeds = leaf
        return leaf

    def _expert_tap(self, sites: list[Site], on_grad: GradCallback):
        """An MoE experts module: each expert's gate neurons, attributed only on the tokens routed to it (an item
        none of whose tokens reach the expert adds nothing to that expert's scores)."""
        by_expert = {site.expert: site for site in sites}

        def expert_tap(expert: int, gate_up: torch.Tensor, token_idx: torch.Tensor) -> None:
            site = by_expert.get(expert)
            if site is None or not gate_up.requires_grad:
                return None
            if checkpointing.phase() != "plain":
                raise RuntimeError(f"{site.name}: mixture-of-experts sites cannot be scored with "
                                   "checkpoint_activations=True")
            act, tokens = gate_up.detach(), token_idx.detach()

            def grad_hook(grad: torch.Tensor) -> None:
                state = self.state
                b, t = state.token_mask.shape
                if int(tokens.max()) >= b * t:
                    raise RuntimeError(f"{site.name}: the experts' input rows are not the batch's B * T tokens")
                routed = torch.zeros(b * t, dtype=torch.bool, device=act.device)
                routed[tokens] = True
                mask = routed.view(b, t) & state.on("token_mask", act.device)
                rows = mask.any(1).nonzero().squeeze(1)
                if rows.numel() == 0:
                    return
                dense_act = moe.scatter_rows(site.view(act), tokens, b, t)[rows]
                dense_grad = moe.scatter_rows(site.view(grad), tokens, b, t)[rows]
                on_grad(site, dense_act, dense_grad, state.subset(rows, mask[rows]))

            gate_up.register_hook(grad_hook)
            return None

        return expert_tap

    def _site_hook(self, sites: list[Site], on_grad: GradCallback, path: str):
        key = object()  # this module's slot for its recomputed activation (activation checkpointing)

        def hook(module, args, output):
            if checkpointing.phase() == "recompute":
                # Second run of a checkpointed layer, in the backward pass: the gradient hook registered in its
                # forward pass takes this activation; no second gradient hook (exactly one attribution).
                self.recomputed[key] = output.detach()
                return None
            if not isinstance(output, torch.Tensor) or (not output.requires_grad and checkpointing.phase() == "plain"):
                raise RuntimeError(
                    f"site {sites[0].name}: module {path} ({type(module).__name__}) returned "
                    f"{'an output with no gradient path' if isinstance(output, torch.Tensor) else type(output).__name__}"
                    "; its neurons cannot be attributed (a quantised layer without a backward?)"
                )
            if not output.requires_grad:
                return None
            # In a checkpointed layer's forward pass the activation is not held until the backward pass.
            held = output.detach() if checkpointing.phase() == "plain" else None

            def grad_hook(grad: torch.Tensor) -> None:
                act = held if held is not None else self.recomputed.pop(key, None)
                if act is None:
                    raise RuntimeError("activation checkpointing: a site's gradient arrived before its layer was "
                                       "recomputed; this model cannot be scored with checkpoint_activations=True")
                # One hook per module output: fused projections are sliced here, with no copy. OPT feeds its MLP
                # the flattened [B * T, H] tokens: its fc1 output is seen as [B, T, N] again.
                shape = (*self.state.token_mask.shape, -1)
                a, g = (act, grad) if act.dim() == 3 else (act.reshape(shape), grad.reshape(shape))
                for site in sites:
                    on_grad(site, site.view(a), site.view(g), self.state)

            output.register_hook(grad_hook)
            return None

        return hook

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()
        self.state = None
        self.embeds = None
        self.recomputed.clear()


def _validated(model: nn.Module, items: Iterable[ItemLike]) -> list[ScoreItem]:
    return as_score_items(items, vocab_size=vocab_size(model))


def _run(
    model: nn.Module,
    items: list[ScoreItem],
    sites: Sequence[Site],
    group_rows: Mapping[str, int],
    on_grad: GradCallback,
    on_probs: Callable[[Batch, torch.Tensor], None],
    batch_size: int,
    progress: bool,
    desc: str,
    skip_batches: int = 0,
    on_batch_end: Callable[[int], None] | None = None,
    checkpoint_activations: bool = False,
) -> None:
    """One forward + one backward per batch; ``on_grad`` runs in each site's gradient hook.

    ``skip_batches`` batches (in the deterministic length-sorted order) are skipped, to resume from a checkpoint;
    ``on_batch_end(number of batches done)`` runs after each batch. With ``checkpoint_activations`` every decoder
    layer is recomputed in the backward pass (``culnig_ext.checkpointing``).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if torch.is_inference_mode_enabled():
        raise RuntimeError("culnig_ext.score needs gradients: call it outside torch.inference_mode()")
    device = model.get_input_embeddings().weight.device
    keep_kw = takes_logits_to_keep(model)
    bar = tqdm(total=len(items), desc=desc, unit="item", disable=not progress, dynamic_ncols=True)
    tokens, started = 0, time.perf_counter()
    with frozen(model), (checkpointing.checkpointed_layers(model) if checkpoint_activations else nullcontext()):
        check_differentiable(model, sites)
        hooks = _Hooks(model, sites, on_grad)
        try:
            batches = make_batches(items, group_rows, batch_size, device, pad_id(model))
            for number, batch in enumerate(batches, start=1):
                if number <= skip_batches:
                    bar.update(len(batch.positions))
                    continue
                hooks.state = BatchState.for_batch(batch.attention_mask, batch.group, len(group_rows))
                n_keep = batch.targets.shape[1]
                kwargs = {"logits_to_keep": n_keep} if keep_kw else {}
                with torch.enable_grad():
                    out = model(
                        input_ids=batch.input_ids,
                        attention_mask=batch.attention_mask,
                        position_ids=batch.position_ids,
                        use_cache=False,
                        **kwargs,
                    )
                    logits = out.logits[:, -n_keep:, :]
                    del out
                    probs = target_log_probs(logits, batch).exp()
                    del logits
                    hooks.state.weight = probs.detach().float()  # the ops take float32 weights
                    on_probs(batch, probs.detach())
                    if hooks.embeds is None:
                        raise RuntimeError("the input embedding hook did not run; cannot attribute this model")
                    torch.autograd.grad(probs.sum(), [hooks.embeds])
                hooks.embeds = None
                hooks.recomputed.clear()
                tokens += batch.num_tokens
                bar.update(len(batch.positions))
                elapsed = max(time.perf_counter() - started, 1e-9)
                bar.set_postfix_str(f"{tokens / elapsed:,.0f} tok/s", refresh=False)
                if on_batch_end is not None:
                    on_batch_end(number)
        finally:
            hooks.close()
            bar.close()


def dataset_fingerprint(items: Sequence[ScoreItem]) -> str:
    """A short hash of the items' ids, groups and token ids (order-independent)."""
    h = hashlib.sha256()
    for item in sorted(items, key=lambda it: it.id):
        h.update(repr((item.id, item.group, item.input_ids, item.target_ids)).encode())
    return h.hexdigest()[:16]


def _model_metadata(model: nn.Module) -> dict[str, str]:
    from . import __version__

    config = getattr(model, "config", None)
    return {
        "package_version": __version__,
        "model": str(getattr(config, "_name_or_path", "") or getattr(model, "name_or_path", "") or type(model).__name__),
        "revision": str(getattr(config, "_commit_hash", None) or ""),
    }


# ------------------------------------------------------------------------------------------------ public API
def score(
    model: nn.Module,
    items: Iterable[ItemLike],
    *,
    batch_size: int = 16,
    sites: Sequence[str] | None = None,
    clamp_min: float | None = None,
    groups: Sequence[str] | None = None,
    progress: bool = True,
    shard: tuple[int, int] | None = None,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int = 20,
    checkpoint_activations: bool = False,
) -> ScoreTable:
    """Attribution scores of every neuron over ``items``, summed per group.

    Args:
        model: a Hugging Face decoder LM on any device(s) (``device_map`` works), any float dtype.
        items: dicts ``{"id", "input_ids", "answer_id" | "target_ids", "group"}`` or ``ScoreItem``.
        batch_size: items per forward/backward pass.
        sites: site names to score (all MLP gate and attention q/k/v sites when None).
        clamp_min: clamp each item's max at this value before weighting (0 for control sets, as the paper does).
        groups: row order of the table (default: order of first appearance); must cover every item's group.
        progress: show a tqdm bar with items/s and tokens/s.
        shard: ``(k, n)``: score only items ``k, k+n, k+2n, ...`` (by input position), e.g. one shard per GPU or
            machine; ``ScoreTable.merge`` of all n shards equals the unsharded table (up to float rounding).
        checkpoint: a file to save the partial table to every ``checkpoint_every`` batches. If it exists and was
            written for the same model, items, sites, clamp and batch size, scoring resumes after the batches it
            holds. Removed once the table is complete.
        checkpoint_activations: recompute each decoder layer in the backward pass instead of keeping its
            activations (long inputs: memory no longer grows with tokens x layers; ~1.3x the time). Same table.

    Returns:
        A ``ScoreTable`` with ``table[site] = Tensor[G, N] float64`` = sum over the group's items of
        ``P(y|x) * max(clamp_min, max_t a_t * dP/da_t)``, plus item counts and summed P per group.
    """
    checked = _validated(model, items)
    if shard is not None:
        k, n = shard
        if not (isinstance(k, int) and isinstance(n, int) and 0 <= k < n):
            raise ValueError(f"shard must be (k, n) with 0 <= k < n, got {shard!r}")
        checked = checked[k::n]
        if not checked:
            raise ValueError(f"shard {shard} has no items ({len(checked)} items in all)")
    chosen = select_sites(model, list(sites) if sites is not None else None)
    names = list(groups) if groups is not None else group_names(checked)
    rows = {g: i for i, g in enumerate(names)}
    unknown = sorted({it.group for it in checked} - set(rows))
    if unknown:
        raise ValueError(f"items have group(s) {unknown} not in groups={names}")
    g = len(names)
    sums = {site.name: torch.zeros(g, site.width, dtype=torch.float64, device=site.device) for site in chosen}
    counts = torch.zeros(g, dtype=torch.int64)
    prob_sums = torch.zeros(g, dtype=torch.float64)

    def on_grad(site: Site, act: torch.Tensor, grad: torch.Tensor, state: BatchState) -> None:
        dev = act.device
        ops.max_attribution_accumulate_(
            sums[site.name], act, grad, state.on("token_mask", dev), state.on("weight", dev), state.on("group", dev),
            clamp_min, *state.tokens_on(dev),
        )

    def on_probs(batch: Batch, probs: torch.Tensor) -> None:
        counts.index_add_(0, batch.group, torch.ones_like(batch.group))
        prob_sums.index_add_(0, batch.group, probs.detach().to("cpu", torch.float64))

    metadata = _model_metadata(model)
    metadata.update(
        dataset_fingerprint=dataset_fingerprint(checked),
        clamp_min="" if clamp_min is None else repr(float(clamp_min)),
    )

    def snapshot(extra: Mapping[str, str] | None = None) -> ScoreTable:
        return ScoreTable(names, counts, {k: v.cpu() for k, v in sums.items()}, prob_sums, {**metadata, **(extra or {})})

    skip, on_batch_end = 0, None
    if checkpoint is not None:
        checkpoint = Path(checkpoint)
        resume_key = {"batch_size": str(batch_size), "sites_hash": _sites_hash(chosen)}
        if checkpoint.is_file():
            skip = _restore(checkpoint, metadata, resume_key, names, sums, counts, prob_sums)
            log.info("resuming from %s after %d batches", checkpoint, skip)

        def on_batch_end(done: int) -> None:
            if done % checkpoint_every == 0:
                snapshot({**resume_key, "batches_done": str(done)}).save(checkpoint)

    _run(model, checked, chosen, rows, on_grad, on_probs, batch_size, progress, "scoring", skip, on_batch_end,
         checkpoint_activations)
    table = snapshot()
    if checkpoint is not None:
        checkpoint.unlink(missing_ok=True)
    return table


def _sites_hash(sites: Sequence[Site]) -> str:
    return hashlib.sha256(repr([(s.name, s.width) for s in sites]).encode()).hexdigest()[:16]


def _restore(
    path: Path,
    metadata: Mapping[str, str],
    resume_key: Mapping[str, str],
    groups: list[str],
    sums: dict[str, torch.Tensor],
    counts: torch.Tensor,
    prob_sums: torch.Tensor,
) -> int:
    """Load a checkpoint into the accumulators; returns the number of batches it holds. A checkpoint written for
    other items, model, sites, clamp or batch size is refused (it cannot be resumed from, and must not be mixed in)."""
    saved = ScoreTable.load(path)
    for key, want in {**resume_key, **{k: metadata[k] for k in ("model", "dataset_fingerprint", "clamp_min")}}.items():
        if saved.metadata.get(key) != want:
            raise ValueError(
                f"checkpoint {path} was written with {key}={saved.metadata.get(key)!r}, this call has {want!r}; "
                f"delete it or pass another checkpoint path"
            )
    if saved.groups != groups or set(saved.sites) != set(sums):
        raise ValueError(f"checkpoint {path} has other groups or sites than this call")
    for name, acc in sums.items():
        acc.copy_(saved[name].to(acc.device))
    counts.copy_(saved.counts)
    prob_sums.copy_(saved.prob_sums)
    return int(saved.metadata["batches_done"])


def item_scores(
    model: nn.Module,
    items: Iterable[ItemLike],
    neurons,
    *,
    batch_size: int = 16,
    progress: bool = True,
) -> torch.Tensor:
    """Per-item scores ``max_t a_t * dP/da_t`` (unweighted) of chosen neurons: ``Tensor[I, K] float32``.

    Rows follow ``items``; columns follow the iteration order of ``neurons`` (a ``NeuronSet`` or ``(site, index)``
    pairs). Used for the instance view: on what share of items is each neuron's score positive.
    """
    checked = _validated(model, items)
    pairs = [(n.site, int(n.index)) if hasattr(n, "site") else (str(n[0]), int(n[1])) for n in neurons]
    if not pairs:
        raise ValueError("no neurons given")
    chosen = select_sites(model, list(dict.fromkeys(site for site, _ in pairs)))
    columns: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for site in chosen:
        cols = [(k, idx) for k, (s, idx) in enumerate(pairs) if s == site.name]
        bad = [idx for _, idx in cols if not 0 <= idx < site.width]
        if bad:
            raise ValueError(f"site {site.name!r}: neuron index {bad[0]} outside [0, {site.width})")
        columns[site.name] = (
            torch.tensor([k for k, _ in cols], dtype=torch.int64),
            torch.tensor([idx for _, idx in cols], dtype=torch.int64),
        )
    result = torch.zeros(len(checked), len(pairs), dtype=torch.float32)
    current: dict[str, torch.Tensor] = {}

    def on_grad(site: Site, act: torch.Tensor, grad: torch.Tensor, state: BatchState) -> None:
        out_cols, idx = columns[site.name]
        maxima = ops.max_attribution(act, grad, state.on("token_mask", act.device), *state.tokens_on(act.device))
        rows = current["rows"] if state.rows is None else current["rows"][state.rows]
        result[rows.unsqueeze(1), out_cols.unsqueeze(0)] = maxima[:, idx.to(maxima.device)].float().cpu()

    def on_probs(batch: Batch, probs: torch.Tensor) -> None:
        current["rows"] = torch.tensor(batch.positions, dtype=torch.int64)

    rows_by_group = {g: 0 for g in group_names(checked)}
    _run(model, checked, chosen, rows_by_group, on_grad, on_probs, batch_size, progress, "item scores")
    return result
