"""Score every neuron of a decoder LLM over a dataset: one forward and one backward per batch.

For an item with prompt x and gold answer y, a neuron's item score is ``max over the item's real tokens t of
a_t * dP(y|x)/da_t``; the dataset score of a group is ``sum over its items of P(y|x) * item score``.

How it stays small and fast:
- Weights are frozen for the call and the embedding output is the only tensor made to require grad, so the
  backward pass computes activation gradients only: no weight-gradient matmuls, nothing written to ``.grad``.
- A forward hook on each site's module registers a gradient hook on the module's output. When the backward pass
  reaches that output, the fused op (``culnig_ext.kernels.ops``) multiplies activation and gradient, takes the running max
  over real tokens and adds ``P * max`` into the site's ``[G, N]`` float64 accumulator, and the activation is
  released. No ``[B, T, N]`` product is ever materialised.
- Logits are computed only at the positions that predict a target token (``logits_to_keep``), never ``[B, T, V]``.
- Items are sorted by length and left-padded, with explicit ``position_ids``, so padding changes nothing but
  float rounding: results do not depend on batch size or order.

At scale (see ``streaming``, ``distributed``, ``checkpoint``): items stream through a background reader a window of
batches at a time; under torch.distributed each rank scores its token-balanced share of every window and the sums
are all-reduced at the end; snapshots are written periodically and on interruption, and resumed bit-identically.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from culnig_ext._utils.progress import bar as progress_bar
from culnig_ext.scoring import distributed as distributed_mod
from culnig_ext.models import checkpointing
from culnig_ext.models import moe
from culnig_ext.kernels import ops
from culnig_ext.kernels import reference
from culnig_ext.data import streaming
from culnig_ext.data.batching import left_pad, length_sorted_batches, pad_id, takes_logits_to_keep, vocab_size
from culnig_ext.scoring.resume import CheckpointError, Checkpointer, rank_path, this_rank_path
from culnig_ext.data.items import ItemError, ScoreItem, as_score_items, group_names
from culnig_ext.scoring.provenance import model_provenance
from culnig_ext.models.sites import Site, select_sites
from culnig_ext.data.streaming import dataset_fingerprint  # re-exported: pipeline reuse compares it

__all__ = ["score", "item_scores", "dataset_fingerprint", "table_provenance", "remove_checkpoint"]
from culnig_ext.scoring.table import ScoreTable
from culnig_ext.models.wrapped import check_differentiable

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
        host_attention_mask: the attention mask's CPU copy (the one it was made from), so the batch's checks and
            token list need no copy back from the device (None: copy ``attention_mask``).
    """

    positions: list[int]
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    targets: torch.Tensor
    target_mask: torch.Tensor
    group: torch.Tensor
    num_tokens: int
    host_attention_mask: torch.Tensor | None = None


def make_batch(
    items: Sequence[ScoreItem], group_rows: Mapping[str, int], device: torch.device, pad: int,
    positions: list[int] | None = None,
) -> Batch:
    """One left-padded batch of ``items`` (in the given order)."""
    ids, mask, position_ids = left_pad([item.fed_ids for item in items], pad)
    n_targets = max(len(item.target_ids) for item in items)
    targets = torch.zeros((len(items), n_targets), dtype=torch.int64)
    target_mask = torch.zeros((len(items), n_targets), dtype=torch.bool)
    for row, item in enumerate(items):
        t = item.target_ids
        targets[row, n_targets - len(t) :] = torch.tensor(t, dtype=torch.int64)
        target_mask[row, n_targets - len(t) :] = True
    group = torch.tensor([group_rows[item.group] for item in items], dtype=torch.int64)
    return Batch(
        list(positions) if positions is not None else list(range(len(items))),
        ids.to(device),
        mask.to(device),
        position_ids.to(device),
        targets,
        target_mask,
        group,
        int(mask.sum()),
        mask,
    )


def make_batches(
    items: Sequence[ScoreItem], group_rows: Mapping[str, int], batch_size: int, device: torch.device, pad: int
) -> Iterator[Batch]:
    """Yield batches of length-sorted items (stable sort, so ties keep input order), left-padded."""
    for positions in length_sorted_batches([len(item.fed_ids) for item in items], batch_size):
        yield make_batch([items[i] for i in positions], group_rows, device, pad, positions)


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
def stage(host: torch.Tensor, device: torch.device) -> torch.Tensor:
    """The CPU tensor ``host`` on ``device``. For a CUDA device it is first copied into pinned (page-locked) memory,
    so the copy to the device is truly asynchronous (``non_blocking``; from pageable memory the host waits for a
    staging copy); torch's pinned allocator keeps the buffer alive until the copy has run. Elsewhere (the CPU)
    ``host.to(device)``: the tensor itself, nothing copied."""
    if device.type != "cuda":
        return host.to(device, non_blocking=True)
    return host.pin_memory().to(device, non_blocking=True)


GradCallback = Callable[[Site, torch.Tensor, torch.Tensor, "BatchState"], None]


@dataclass
class BatchState:
    """What the gradient hooks need about the current batch, moved lazily to each site's device.

    token_index [B, T] int32 / token_count [B] int32: the batch's compact token list (``ops.token_list``), built
    and checked once per batch on the host by :meth:`for_batch` and shared by every site, so the ops need no
    host synchronisation per site. The host tensors the hooks need (token list, groups, group rows) are staged
    on the batch's device once per batch (:meth:`staged`, via pinned memory on CUDA) before the forward pass, so
    no hook waits on a copy from pageable memory.
    """

    token_mask: torch.Tensor  # [B, T] bool
    group: torch.Tensor  # [B] int64
    weight: torch.Tensor | None = None  # [B] float32, P(y|x), known after the forward pass
    rows: torch.Tensor | None = None  # [g] int64, the distinct group rows of the batch
    token_index: torch.Tensor | None = None  # [B, T] int32
    token_count: torch.Tensor | None = None  # [B] int32
    batch_rows: torch.Tensor | None = None  # [B'] int64: for a sub-batch (MoE expert), its rows in the whole batch
    host_mask: torch.Tensor | None = None  # [B, T] bool on the CPU: token_mask's host copy (MoE experts' rows)
    _cache: dict = field(default_factory=dict)

    @classmethod
    def for_batch(cls, attention_mask: torch.Tensor, group: torch.Tensor, n_groups: int,
                  host_mask: torch.Tensor | None = None) -> "BatchState":
        """Check the batch once on the host (every item has a token, every group row < n_groups) and build its
        token list. ``attention_mask [B, T]`` on any device; ``host_mask``: its CPU copy when the caller has one
        (no copy back from the device, so no synchronisation), else ``attention_mask`` is copied to the host once;
        ``group [B]`` int64 on the CPU."""
        if host_mask is None:
            host_mask = attention_mask.detach().to("cpu")
        index, count = ops.token_list(host_mask.to(torch.bool))
        reference.check_group_range("culnig.score", group.cpu(), n_groups)
        state = cls(token_mask=attention_mask.bool(), group=group, rows=torch.unique(group), token_index=index,
                    token_count=count, host_mask=host_mask.to(torch.bool))
        return state.staged(attention_mask.device)

    def subset(self, rows_host: torch.Tensor, token_mask: torch.Tensor, host_mask: torch.Tensor) -> "BatchState":
        """The state of the batch rows ``rows_host [B'] int64`` (on the CPU) with another ``token_mask [B', T]``
        (an MoE expert's routed tokens, on its device; every row has one) and that mask's host copy ``host_mask``,
        from which the token list is built: nothing is copied back from the device."""
        index, count = ops.token_list(host_mask)
        group = self.group[rows_host.to(self.group.device)]
        weight = None if self.weight is None else self.weight[stage(rows_host, self.weight.device)]
        state = BatchState(token_mask=token_mask, group=group, weight=weight, rows=torch.unique(group),
                           token_index=index, token_count=count, batch_rows=rows_host, host_mask=host_mask)
        return state.staged(token_mask.device)

    # The host tensors a hook moves to its site's device.
    STAGED = ("token_index", "token_count", "group", "rows")

    def staged(self, device: torch.device) -> "BatchState":
        """This state with its host tensors (:data:`STAGED`) copied to ``device`` now (see :func:`stage`)."""
        for name in self.STAGED:
            host = getattr(self, name)
            if host is not None and host.device.type == "cpu":
                self._cache[(name, device)] = stage(host, device)
        return self

    def on(self, name: str, device: torch.device) -> torch.Tensor:
        key = (name, device)
        if key not in self._cache:  # a site on another device than the batch's (a model spread over GPUs)
            value = getattr(self, name)
            host = name in self.STAGED and value.device.type == "cpu"
            self._cache[key] = stage(value, device) if host else value.to(device, non_blocking=True)
        return self._cache[key]

    def tokens_on(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """``(token_index, token_count)`` on ``device``."""
        return self.on("token_index", device), self.on("token_count", device)


def routed_rows(site: str, tokens_host: torch.Tensor, host_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """An MoE expert's part of the batch, on the host: ``tokens_host [n] int64`` (the flat ``B * T`` positions
    routed to it) and the batch's ``host_mask [B, T] bool`` -> ``(rows [B'] int64``, the batch rows with a real
    token routed to the expert, ``mask [B', T] bool``, those rows' routed real tokens)."""
    b, t = host_mask.shape
    if tokens_host.numel() and int(tokens_host.max()) >= b * t:
        raise RuntimeError(f"{site}: the experts' input rows are not the batch's B * T tokens")
    routed = torch.zeros(b * t, dtype=torch.bool)
    routed[tokens_host] = True
    mask = routed.view(b, t) & host_mask
    rows = mask.any(1).nonzero().squeeze(1)
    return rows, mask[rows]


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

        def expert_tap(expert: int, gate_up: torch.Tensor, token_idx: torch.Tensor,
                       token_idx_host: torch.Tensor) -> None:
            site = by_expert.get(expert)
            if site is None or not gate_up.requires_grad:
                return None
            if checkpointing.phase() != "plain":
                raise RuntimeError(f"{site.name}: mixture-of-experts sites cannot be scored with "
                                   "checkpoint_activations=True")
            act, tokens, tokens_host = gate_up.detach(), token_idx.detach(), token_idx_host

            def grad_hook(grad: torch.Tensor) -> None:
                # The expert's rows and routed-token mask come from the route's host copy of its token positions
                # and the batch's host mask: no device-to-host copy per expert (each would synchronise a GPU).
                state = self.state
                b, t = state.token_mask.shape
                rows_host, mask_host = routed_rows(site.name, tokens_host, state.host_mask)
                if rows_host.numel() == 0:
                    return
                dev = act.device
                rows = stage(rows_host, dev)
                routed = torch.zeros(b * t, dtype=torch.bool, device=dev)
                routed[tokens] = True
                mask = (routed.view(b, t) & state.on("token_mask", dev))[rows]
                dense_act = moe.scatter_rows(site.view(act), tokens, b, t)[rows]
                dense_grad = moe.scatter_rows(site.view(grad), tokens, b, t)[rows]
                on_grad(site, dense_act, dense_grad, state.subset(rows_host, mask, mask_host))

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


def input_device(model: nn.Module) -> torch.device:
    """Where input ids go: the embedding's device, or, when accelerate offloads it (``meta`` weights), the device
    its hook executes on."""
    embedding = model.get_input_embeddings()
    device = embedding.weight.device
    if device.type != "meta":
        return device
    hook = getattr(embedding, "_hf_hook", None)
    execution = getattr(hook, "execution_device", None)
    return torch.device(execution) if execution is not None else torch.device("cpu")


def _step(model: nn.Module, hooks: _Hooks, batch: Batch, keep_kw: bool, n_groups: int,
          before_backward: Callable[[Batch, torch.Tensor], None] | None = None) -> torch.Tensor:
    """One forward and one backward pass over ``batch``; returns ``P(y|x)`` per item, ``[B]`` (detached)."""
    hooks.state = BatchState.for_batch(batch.attention_mask, batch.group, n_groups, batch.host_attention_mask)
    n_keep = batch.targets.shape[1]
    kwargs = {"logits_to_keep": n_keep} if keep_kw else {}
    try:
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
            if before_backward is not None:
                before_backward(batch, probs.detach())
            if hooks.embeds is None:
                raise RuntimeError("the input embedding hook did not run; cannot attribute this model")
            torch.autograd.grad(probs.sum(), [hooks.embeds])
    finally:
        hooks.embeds = None
        hooks.recomputed.clear()
    return probs.detach()


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
) -> None:
    """One forward + one backward per length-sorted batch of a list of items; ``on_grad`` runs in each site's
    gradient hook, ``on_probs`` after each forward pass."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if torch.is_inference_mode_enabled():
        raise RuntimeError("culnig_ext.score needs gradients: call it outside torch.inference_mode()")
    device = input_device(model)
    keep_kw = takes_logits_to_keep(model)
    bar = progress_bar(total=len(items), desc=desc, unit="item", disable=not progress, dynamic_ncols=True)
    with frozen(model):
        check_differentiable(model, sites)
        hooks = _Hooks(model, sites, on_grad)
        try:
            for batch in make_batches(items, group_rows, batch_size, device, pad_id(model)):
                _step(model, hooks, batch, keep_kw, len(group_rows), on_probs)
                bar.update(len(batch.positions))
        finally:
            hooks.close()
            bar.close()


class _Accumulators:
    """The ``[G, N]`` float64 sums of every site, created where the activations arrive (on the first gradient), so
    a model whose site weights sit on ``meta`` (accelerate CPU/disk offload) works; rows are added as groups appear.

    Each batch's contribution can be rolled back (``begin``/``rollback``): before a site's first update in a batch,
    the rows of the batch's groups are saved. An out-of-memory error or an interruption half-way through the
    backward pass then leaves the sums exactly as after the previous batch.
    """

    def __init__(self, sites: Sequence[Site], n_groups: int) -> None:
        self.width = {site.name: site.width for site in sites}
        self.sums: dict[str, torch.Tensor | None] = {site.name: None for site in sites}
        self.rows = n_groups
        self._undo: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def get(self, name: str, device: torch.device) -> torch.Tensor:
        acc = self.sums[name]
        if acc is None:
            acc = torch.zeros(self.rows, self.width[name], dtype=torch.float64, device=device)
        else:
            if acc.device != device:
                acc = acc.to(device)
            if acc.shape[0] < self.rows:
                extra = torch.zeros(self.rows - acc.shape[0], acc.shape[1], dtype=acc.dtype, device=acc.device)
                acc = torch.cat([acc, extra])
        self.sums[name] = acc
        return acc

    def touch(self, name: str, acc: torch.Tensor, rows: torch.Tensor) -> None:
        if name not in self._undo:
            self._undo[name] = (rows, acc.index_select(0, rows))

    def begin(self) -> None:
        self._undo = {}

    def rollback(self) -> None:
        for name, (rows, saved) in self._undo.items():
            self.sums[name].index_copy_(0, rows, saved)
        self._undo = {}

    def cpu(self) -> dict[str, torch.Tensor]:
        out = {}
        for name, width in self.width.items():
            acc = self.sums[name]
            if acc is None or acc.shape[0] < self.rows:
                acc = self.get(name, torch.device("cpu") if acc is None else acc.device)
            out[name] = acc.cpu()
        return out


def _is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError)


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
    checkpoint_seconds: float = 300.0,
    keep_checkpoint: bool = False,
    distributed: bool | None = None,
    window: int = 32,
    max_items: int | None = None,
    provenance: Mapping[str, str] | None = None,
    checkpoint_activations: bool = False,
) -> ScoreTable:
    """Attribution scores of every neuron over ``items``, summed per group.

    Items are streamed: read, validated and (when ``items`` is a lazy encoder) tokenised in a background thread, a
    window of ``window`` batches at a time, length-sorted within the window; memory does not grow with the number
    of items (but for 8 bytes an item: the item-id hashes that let ``ScoreTable.merge`` refuse overlaps).

    Args:
        model: a Hugging Face decoder LM on any device(s) (``device_map`` and accelerate offload work), any float
            dtype.
        items: any iterable (list, generator, ``datasets.IterableDataset``, ``streaming.read_score_jsonl(path)``)
            of dicts ``{"id", "input_ids", "answer_id" | "target_ids", "group"}`` or ``ScoreItem``.
        batch_size: items per forward/backward pass. A batch that runs out of memory is split in two and retried.
        sites: site names to score (all MLP gate and attention q/k/v sites when None).
        clamp_min: clamp each item's max at this value before weighting (0 for control sets, as the paper does).
        groups: row order of the table (default: order of first appearance); must cover every item's group.
        progress: show a tqdm bar with items/s and tokens/s (with a total when ``items`` has a length).
        shard: ``(k, n)``: score only items ``k, k+n, k+2n, ...`` (by input position); ``ScoreTable.merge`` of all
            n shards equals the unsharded table (up to float rounding).
        checkpoint: a file to snapshot the partial table to (atomically) every ``checkpoint_every`` batches and
            after any batch ending ``checkpoint_seconds`` after the last snapshot, and when scoring stops on an
            exception (Ctrl-C included). If it exists and was written by the same kind of run (provenance, items,
            sites, batch size, window, shard, world size), scoring resumes after the batches it holds, giving a
            table bit-identical to an uninterrupted run. Removed once the table is complete unless
            ``keep_checkpoint``. Under torch.distributed each rank uses ``<checkpoint>.rank<r>-of-<n>``.
        distributed: None: data-parallel over the ranks of torch.distributed when a process group is initialised
            or RANK/WORLD_SIZE are set (torchrun); False: never; True: required. Each rank scores a disjoint,
            token-balanced share of the batches; the sums are all-reduced, so every rank returns the full table.
        window: batches per length-sorting window.
        max_items: score only the first ``max_items`` items of ``items``.
        provenance: extra provenance strings to record and compare on resume (``prompt_format``, ``control``).
        checkpoint_activations: recompute each decoder layer in the backward pass instead of keeping its
            activations (long inputs: memory no longer grows with tokens x layers; ~1.3x the time). Same table.

    Returns:
        A ``ScoreTable`` with ``table[site] = Tensor[G, N] float64`` = sum over the group's items of
        ``P(y|x) * max(clamp_min, max_t a_t * dP/da_t)``, plus item counts, summed P per group, the item-id hashes
        and provenance metadata.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if torch.is_inference_mode_enabled():
        raise RuntimeError("culnig_ext.score needs gradients: call it outside torch.inference_mode()")
    if shard is not None:
        k, n = shard
        if not (isinstance(k, int) and isinstance(n, int) and 0 <= k < n):
            raise ValueError(f"shard must be (k, n) with 0 <= k < n, got {shard!r}")
    chosen = select_sites(model, list(sites) if sites is not None else None)
    stream = streaming.ItemStream(items, vocab_size=vocab_size(model), max_items=max_items, shard=shard)
    job = distributed_mod.discover(distributed)
    try:
        return _score_stream(model, stream, chosen, batch_size=batch_size, clamp_min=clamp_min, groups=groups,
                             progress=progress and (job is None or job.is_main), checkpoint=checkpoint,
                             checkpoint_every=checkpoint_every, checkpoint_seconds=checkpoint_seconds,
                             keep_checkpoint=keep_checkpoint, job=job, window=window,
                             provenance=dict(provenance or {}), checkpoint_activations=checkpoint_activations)
    finally:
        distributed_mod.close(job)


def table_provenance(model: nn.Module, clamp_min: float | None, extra: Mapping[str, str] | None = None
                     ) -> dict[str, str]:
    """The provenance strings a table scored with these settings records (see ``culnig_ext.scoring.provenance``)."""
    meta = model_provenance(model)
    meta.update(prompt_format="", control="", clamp_min="" if clamp_min is None else repr(float(clamp_min)))
    meta.update({k: str(v) for k, v in (extra or {}).items()})
    return meta


def _score_stream(model: nn.Module, stream: streaming.ItemStream, chosen: Sequence[Site], *, batch_size: int,
                  clamp_min: float | None, groups: Sequence[str] | None, progress: bool,
                  checkpoint: str | os.PathLike | None, checkpoint_every: int, checkpoint_seconds: float,
                  keep_checkpoint: bool, job: distributed_mod.Dist | None, window: int, provenance: dict[str, str],
                  checkpoint_activations: bool = False) -> ScoreTable:
    """The engine of ``score`` (arguments checked there), as a sequence of stages: the partial table; resuming
    from a checkpoint; scoring this rank's batches of every window with hooks on the sites (the snapshot on
    failure); the final table (summed over the ranks)."""
    rank, world = (job.rank, job.world) if job is not None else (0, 1)
    metadata = table_provenance(model, clamp_min, provenance)
    table = _PartialTable(chosen, groups, metadata)
    start = _resume(checkpoint, table, chosen, stream, batch_size=batch_size, window=window, rank=rank,
                    world=world, every=checkpoint_every, seconds=checkpoint_seconds)
    on_grad = _accumulating(table.acc, clamp_min)
    device, keep_kw, pad = input_device(model), takes_logits_to_keep(model), pad_id(model)
    bar = progress_bar(total=stream.total, desc="scoring", unit="item", disable=not progress,
                       dynamic_ncols=True)
    done = _Progress(bar, start.skip)
    layers = checkpointing.checkpointed_layers(model) if checkpoint_activations else nullcontext()
    with frozen(model), layers:
        check_differentiable(model, chosen)
        hooks = _Hooks(model, chosen, on_grad)
        runner = _BatchRunner(model, hooks, table, device, keep_kw, pad)
        source = streaming.background(_windows(stream, batch_size, window))
        try:
            _score_windows(source, runner, start, done, job, rank, world)
        except BaseException as exc:
            _stopped(exc, table, start, done, job, rank)
            raise
        finally:
            source.close()
            hooks.close()
            bar.close()
    return _final_table(stream, table, job, start.ckpt, keep_checkpoint)


class _PartialTable:
    """The table while it is scored: its group rows in table order (``names``; ``rows``: the row of each name),
    item counts and summed ``P(y|x)`` per row, and the ``[G, N]`` site sums (``acc``). Rows are added as new groups
    appear, unless ``groups=`` fixed them.

    ``metadata`` is the caller's provenance dict itself (not a copy): ``snapshot`` records what it holds then.
    """

    def __init__(self, sites: Sequence[Site], groups: Sequence[str] | None, metadata: dict[str, str]) -> None:
        self.metadata = metadata
        self.fixed = groups is not None
        self.names: list[str] = list(groups) if self.fixed else []
        self.rows: dict[str, int] = {g: i for i, g in enumerate(self.names)}
        self.acc = _Accumulators(sites, len(self.names))
        self.counts = torch.zeros(len(self.names), dtype=torch.int64)
        self.prob_sums = torch.zeros(len(self.names), dtype=torch.float64)
        # P(y|x) of the batches scored since the last snapshot, left where they were computed (group rows on the
        # CPU, probabilities on the model's device): no copy to the host, so no synchronisation, per batch.
        self._pending: list[tuple[torch.Tensor, torch.Tensor]] = []

    def restore(self, saved: ScoreTable) -> None:
        """Continue from a checkpoint's snapshot: its groups, counts, P sums and site sums (copies)."""
        self.names = list(saved.groups)
        self.rows = {g: i for i, g in enumerate(self.names)}
        self.acc.rows = len(self.names)
        self.acc.sums = {name: saved[name].clone() for name in self.acc.sums}
        self.counts, self.prob_sums = saved.counts.clone(), saved.prob_sums.clone()
        self._pending = []

    def grow(self, new_groups: Sequence[str]) -> None:
        """Add a row (zero counts and sums) for each group of ``new_groups`` not yet in the table, in order;
        ``ValueError`` for one when the rows are fixed."""
        unknown = [g for g in new_groups if g not in self.rows]
        if not unknown:
            return
        if self.fixed:
            raise ValueError(f"items have group(s) {unknown} not in groups={self.names}")
        for g in unknown:
            self.rows[g] = len(self.names)
            self.names.append(g)
        self.acc.rows = len(self.names)
        self.counts = torch.cat([self.counts, torch.zeros(len(unknown), dtype=torch.int64)])
        self.prob_sums = torch.cat([self.prob_sums, torch.zeros(len(unknown), dtype=torch.float64)])

    def add(self, group: torch.Tensor, probs: torch.Tensor) -> None:
        """Count a scored batch's items (``group [B]`` int64 rows on the CPU) and keep their ``P(y|x)``
        (``probs [B]``, on its device) to be added to ``prob_sums`` when the table is next written (:meth:`snapshot`):
        no synchronisation per batch."""
        self.counts.index_add_(0, group, torch.ones_like(group))
        self._pending.append((group, probs.detach()))

    def _flush_probs(self) -> None:
        """Add the pending batches' ``P(y|x)`` to ``prob_sums``: one copy to the host for all of them, then one
        float64 ``index_add_`` per batch in scoring order (the sums of adding each batch as it came)."""
        if not self._pending:
            return
        host = torch.cat([p.reshape(-1).to(torch.float64) for _, p in self._pending]).to("cpu")
        start = 0
        for group, p in self._pending:
            n = group.numel()
            self.prob_sums.index_add_(0, group, host[start:start + n])
            start += n
        self._pending = []

    def snapshot(self) -> ScoreTable:
        """The table as it stands (site sums on the CPU, the pending P sums added, a copy of the metadata)."""
        self._flush_probs()
        return ScoreTable(self.names, self.counts, self.acc.cpu(), self.prob_sums, dict(self.metadata))


@dataclass
class _Start:
    """Where a run starts: its checkpointer (None without ``checkpoint``), the snapshot it resumes from (None when
    it starts afresh) and the global batches that snapshot holds (``skip``: they are not scored again)."""

    ckpt: Checkpointer | None
    saved: ScoreTable | None
    skip: int


def _checkpoint_key(table: _PartialTable, chosen: Sequence[Site], stream: streaming.ItemStream, *, batch_size: int,
                    window: int, rank: int, world: int) -> dict[str, str]:
    """What a checkpoint records of the run that wrote it, and must match to be resumed: the provenance, batch
    size, window, sites, shard, item limit, rank and world size, and the fixed groups (if any)."""
    return {**table.metadata, "batch_size": str(batch_size), "window": str(window), "sites_hash": _sites_hash(chosen),
            "shard": "" if stream.shard is None else f"{stream.shard[0]}/{stream.shard[1]}",
            "max_items": "" if stream.max_items is None else str(stream.max_items),
            "world": str(world), "rank": str(rank), "fixed_groups": json.dumps(table.names) if table.fixed else ""}


def _resume(checkpoint: str | os.PathLike | None, table: _PartialTable, chosen: Sequence[Site],
            stream: streaming.ItemStream, *, batch_size: int, window: int, rank: int, world: int, every: int,
            seconds: float) -> _Start:
    """This rank's checkpointer for ``checkpoint`` (none without one); when its file holds a snapshot of the same
    kind of run, ``table`` continues from it and the run skips the batches it holds."""
    if checkpoint is None:
        return _Start(None, None, 0)
    key = _checkpoint_key(table, chosen, stream, batch_size=batch_size, window=window, rank=rank, world=world)
    ckpt = Checkpointer(rank_path(checkpoint, rank, world), key, every, seconds)
    saved = ckpt.load()
    if saved is None:
        return _Start(ckpt, None, 0)
    table.restore(saved)
    skip = int(saved.metadata["batches_done"])
    log.warning("resuming from %s after batch %d", ckpt.path, skip)
    return _Start(ckpt, saved, skip)


def _accumulating(acc: _Accumulators, clamp_min: float | None) -> GradCallback:
    """The gradient callback of ``score`` (it runs in every site's gradient hook): the fused op adds the batch's
    ``P * max`` into the site's accumulator, after saving the rows it changes (``_Accumulators.touch``)."""

    def on_grad(site: Site, act: torch.Tensor, grad: torch.Tensor, state: BatchState) -> None:
        dev = act.device
        target = acc.get(site.name, dev)
        acc.touch(site.name, target, state.on("rows", dev))
        ops.max_attribution_accumulate_(
            target, act, grad, state.on("token_mask", dev), state.on("weight", dev), state.on("group", dev),
            clamp_min, *state.tokens_on(dev),
        )

    return on_grad


class _BatchRunner:
    """Scores batches of items into a partial table: one forward and one backward pass each (``_step``, with the
    gradient hooks ``hooks``). A batch that fails leaves the site sums as they were; one of several items that runs
    out of memory is scored again as two halves."""

    def __init__(self, model: nn.Module, hooks: _Hooks, table: _PartialTable, device: torch.device, keep_kw: bool,
                 pad: int) -> None:
        self.model, self.hooks, self.table = model, hooks, table
        self.device, self.keep_kw, self.pad = device, keep_kw, pad

    def run(self, batch_items: list[ScoreItem]) -> None:
        """Score ``batch_items`` (one batch, in this order) and count them in the table."""
        batch = make_batch(batch_items, self.table.rows, self.device, self.pad)
        self.table.acc.begin()
        try:
            probs = _step(self.model, self.hooks, batch, self.keep_kw, len(self.table.names))
        except BaseException as exc:
            self.table.acc.rollback()
            if not (_is_oom(exc) and len(batch_items) > 1):
                raise
            oom = True
        else:
            oom = False
        if oom:  # split outside the except block, so the failed pass's tensors are freed first
            del batch
            self._run_halves(batch_items)
            return
        self.table.add(batch.group, probs)

    def _run_halves(self, batch_items: list[ScoreItem]) -> None:
        """After running out of memory on ``batch_items``: free the cached GPU memory, score each half."""
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        half = len(batch_items) // 2
        log.warning("out of memory on a batch of %d items; splitting it into %d + %d and retrying",
                    len(batch_items), half, len(batch_items) - half)
        self.run(batch_items[:half])
        self.run(batch_items[half:])


def _windows(stream: streaming.ItemStream, batch_size: int, window: int
             ) -> Iterator[tuple[list[list[ScoreItem]], list[str], str, int]]:
    """The stream's windows of batches, each with what the stream has seen once it is read: the groups (in order
    of first appearance), the items' fingerprint and the number of items read."""
    for batches in streaming.windowed_batches(stream, batch_size, window):
        yield batches, list(stream.groups), stream.fingerprint.hexdigest(), stream.read


@dataclass
class _Progress:
    """How far a run has got. ``complete``: the last global batch that is done (scored here, another rank's, or in
    the snapshot resumed from), ``state``: its window's item state (both for a snapshot); ``tokens`` scored here
    since ``started``, for the tokens/s on ``bar``."""

    bar: tqdm
    complete: int
    state: dict[str, str] = field(default_factory=dict)
    tokens: int = 0
    started: float = field(default_factory=time.perf_counter)

    def advance(self, number: int, state: dict[str, str], n_items: int) -> None:
        """Global batch ``number`` (``n_items`` items, of the window with item state ``state``) is done."""
        self.complete, self.state = max(self.complete, number), state
        self.bar.update(n_items)
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        self.bar.set_postfix_str(f"{self.tokens / elapsed:,.0f} tok/s", refresh=False)


def _score_windows(source: Iterable[tuple[list[list[ScoreItem]], list[str], str, int]], runner: _BatchRunner,
                   start: _Start, done: _Progress, job: distributed_mod.Dist | None, rank: int, world: int) -> None:
    """Score every window of ``source`` (see ``_windows``): new groups get rows, the batches are shared out among
    the ranks, this rank scores its own (but those the snapshot resumed from holds) and snapshots when due; under
    torch.distributed the ranks check after each window that none has failed."""
    loads = [0] * world  # tokens per rank so far: batches are shared out by tokens, across windows
    before = 0  # global batches in the windows before this one
    for batches, seen_groups, fingerprint, n_read in source:
        runner.table.grow(seen_groups)
        state = {"items_fingerprint": fingerprint, "items_read": str(n_read)}
        if start.saved is not None and before < start.skip <= before + len(batches):
            _check_same_items(start, fingerprint, n_read)
        owner = (distributed_mod.assign([sum(len(it.fed_ids) for it in b) for b in batches], loads)
                 if job is not None else [0] * len(batches))
        for j, batch_items in enumerate(batches):
            _score_batch(before + j + 1, batch_items, owner[j] == rank, state, runner, start, done)
        before += len(batches)
        if job is not None:
            distributed_mod.check(job, True)


def _check_same_items(start: _Start, fingerprint: str, n_read: int) -> None:
    """In the window where a resumed run picks up: ``CheckpointError`` unless the items read so far are those the
    snapshot was written after (same fingerprint, same count)."""
    want = (start.saved.metadata.get("items_fingerprint"), start.saved.metadata.get("items_read"))
    if want != (fingerprint, str(n_read)):
        raise CheckpointError(
            f"checkpoint {start.ckpt.path} was written for other items (items_fingerprint of the first "
            f"{want[1]} items differs); delete it or pass another checkpoint path")


def _score_batch(number: int, batch_items: list[ScoreItem], mine: bool, state: dict[str, str], runner: _BatchRunner,
                 start: _Start, done: _Progress) -> None:
    """Global batch ``number``: scored when it is this rank's (``mine``) and not in the snapshot resumed from;
    then done (progress bar) and, when one is due, a snapshot."""
    if number > start.skip and mine:
        runner.run(batch_items)
        done.tokens += sum(len(it.fed_ids) for it in batch_items)
    done.advance(number, state, len(batch_items))
    if start.ckpt is not None and number > start.skip and start.ckpt.due(number):
        start.ckpt.save(runner.table.snapshot, number, state)


def _stopped(exc: BaseException, table: _PartialTable, start: _Start, done: _Progress,
             job: distributed_mod.Dist | None, rank: int) -> None:
    """Scoring stopped on ``exc`` (the caller re-raises it): the half-scored batch is undone, the batches done are
    snapshotted (not when the checkpoint itself was refused), ``exc`` gets a note saying how to resume, and under
    torch.distributed the other ranks are told (unless the failure is theirs, or an interruption)."""
    table.acc.rollback()
    ckpt = start.ckpt
    if ckpt is not None and not isinstance(exc, CheckpointError) and done.complete > ckpt.last_done:
        ckpt.save(table.snapshot, done.complete, done.state)
    if ckpt is not None and ckpt.path.exists() and not isinstance(exc, CheckpointError):
        # a note, not a log line: the CLI prints its own one-line message (with the command to re-run)
        exc.add_note(f"scoring stopped after batch {ckpt.last_done}; progress is saved in {ckpt.path}: "
                     "run the same command (the same score() call) again to resume")
        log.info("scoring stopped after batch %d; progress saved in %s", ckpt.last_done, ckpt.path)
    if job is not None and isinstance(exc, Exception) and not isinstance(exc, distributed_mod.RankFailed):
        try:  # tell the other ranks, so they stop now instead of at the timeout
            distributed_mod.check(job, False)
        except Exception as other:  # the original error is re-raised by the caller
            log.warning("rank %d could not tell the others it failed: %s", rank, other)


def _final_table(stream: streaming.ItemStream, table: _PartialTable, job: distributed_mod.Dist | None,
                 ckpt: Checkpointer | None, keep_checkpoint: bool) -> ScoreTable:
    """The finished table: ``ItemError`` when no item was scored; the dataset fingerprint and item-id hashes
    recorded; under torch.distributed the sums of all ranks; the checkpoint removed unless ``keep_checkpoint``."""
    if stream.fingerprint.count == 0:
        if stream.shard is not None and stream.read:
            raise ItemError(f"shard {stream.shard} has no items ({stream.read} items in all)")
        raise ItemError("no items to score")
    hashes = torch.from_numpy(stream.sorted_id_hashes().copy())
    metadata = table.metadata
    metadata["dataset_fingerprint"] = stream.fingerprint.hexdigest()
    result = table.snapshot()
    if job is not None:
        reduced = distributed_mod.all_reduce_sum(job, [result.counts, result.prob_sums, *result.table.values()])
        result = ScoreTable(table.names, reduced[0], dict(zip(result.sites, reduced[2:])), reduced[1], metadata)
    result.metadata = dict(metadata)
    result.item_hashes = hashes
    if ckpt is not None and not keep_checkpoint:
        ckpt.remove()
    return result


def remove_checkpoint(checkpoint: str | os.PathLike) -> None:
    """Remove the checkpoint file of a finished run (this rank's under torch.distributed)."""
    this_rank_path(checkpoint).unlink(missing_ok=True)


def _sites_hash(sites: Sequence[Site]) -> str:
    return hashlib.sha256(repr([(s.name, s.width) for s in sites]).encode()).hexdigest()[:16]


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
    pending: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    current: dict[str, torch.Tensor] = {}
    on_device: dict[tuple[str, torch.device], torch.Tensor] = {}

    def on_grad(site: Site, act: torch.Tensor, grad: torch.Tensor, state: BatchState) -> None:
        out_cols, idx = columns[site.name]
        maxima = ops.max_attribution(act, grad, state.on("token_mask", act.device), *state.tokens_on(act.device))
        rows = current["rows"] if state.batch_rows is None else current["rows"][state.batch_rows]
        key = (site.name, maxima.device)
        if key not in on_device:  # the site's neuron indices, copied to its device once
            on_device[key] = stage(idx, maxima.device)
        pending.append((rows, out_cols, maxima[:, on_device[key]].float()))
        if sum(values.numel() for _, _, values in pending) > PENDING_SCORES:  # bound what waits on the device
            gather_scores(result, pending)

    def on_probs(batch: Batch, probs: torch.Tensor) -> None:
        current["rows"] = torch.tensor(batch.positions, dtype=torch.int64)

    rows_by_group = {g: 0 for g in group_names(checked)}
    _run(model, checked, chosen, rows_by_group, on_grad, on_probs, batch_size, progress, "item scores")
    gather_scores(result, pending)
    return result


# item_scores keeps about this many scores on the device before copying them to the host (256 MiB of float32).
PENDING_SCORES = 64 * 2**20


def gather_scores(result: torch.Tensor, pending: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> None:
    """Write the pieces ``(rows [b] int64, columns [k] int64, values [b, k] float32)`` of :func:`item_scores`'
    table (each site of each batch, values still on their device) into ``result [items, columns]`` on the host
    and empty ``pending``: one copy to the host per device for all the pieces together (one synchronisation after
    the last batch, or when :data:`PENDING_SCORES` is passed), instead of one per site and batch."""
    by_device: dict[torch.device, list[int]] = {}
    for k, (_, _, values) in enumerate(pending):
        by_device.setdefault(values.device, []).append(k)
    for numbers in by_device.values():
        flat = torch.cat([pending[k][2].reshape(-1) for k in numbers]).to("cpu")
        for k, host in zip(numbers, flat.split([pending[k][2].numel() for k in numbers])):
            rows, columns, values = pending[k]
            result[rows.unsqueeze(1), columns.unsqueeze(0)] = host.view(values.shape)
    pending.clear()
