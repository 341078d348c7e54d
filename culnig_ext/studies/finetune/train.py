"""Fine-tune only the picked blocks of a model (full or LoRA), everything else frozen and checked bit for bit.

``finetune(model, tokenizer, train_items, blocks, ...)`` trains the linear modules of ``blocks``
(``modules.ModuleBlock``) on target-task items (``data.tasks``: the item's question as the chat template's user turn,
the target the gold choice's tokens right after the generation prompt, loss on the target tokens only), with the
defaults of CULNIG's ``train/config.yaml``: AdamW (weight decay 0, as HF Trainer's default), lr 3e-5 constant, one
epoch, batch 4 with 4 accumulation steps (16 items per optimizer step), gradient clipping at 1.0 (Trainer's
default), LoRA r=32, alpha=64, dropout 0 on the same modules.

A lean loop, not HF Trainer: one constant-lr epoch needs none of Trainer's machinery (accelerate, schedulers,
checkpoints, logging integrations), and here the data order (a ``torch.Generator`` permutation), the LoRA
initialisation (a forked, seeded RNG) and the loss normalisation are explicit, so a seed reproduces a run bit for bit
on the same machine.

Before training, every parameter that must not change (full: all outside the picked modules; LoRA: every base
parameter) is fingerprinted (BLAKE2b of its bytes); after training they are checked, and a change raises. LoRA
adapters are merged into the picked modules' weights afterwards (PEFT's ``merge_and_unload``), so the model comes
back as the same plain module with only those weights changed.
"""
from __future__ import annotations

import hashlib
import math
import time
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from culnig_ext.data.batching import left_pad, pad_id, takes_logits_to_keep
from culnig_ext.data.schema import MCItem, validate_items
from culnig_ext.data.tasks import task_prompt
from culnig_ext.data.prompts import TokenizerError, tokenizer_name
from culnig_ext.studies.finetune.blocks import ModuleBlock, target_modules
from culnig_ext.studies.finetune.settings import PAPER_BATCH_SIZE, PAPER_GRAD_ACCUM, PAPER_LR

# CULNIG's train/config.yaml
PAPER_LORA = {"r": 32, "alpha": 64, "dropout": 0.0}
MAX_GRAD_NORM = 1.0  # HF Trainer's default, which the paper's script keeps


@dataclass
class FinetuneResult:
    """What a ``finetune`` call did.

    Attributes:
        mode: ``"full"`` or ``"lora"``.
        trained_modules: full names of the modules whose weights changed: the picked linear modules (full), or
            the modules PEFT put LoRA layers on (read from the PEFT model, before merging).
        trainable_params: parameters the optimizer updated (full: the modules' weights and biases; LoRA: A and B).
        steps: optimizer steps taken; ``items_seen``: training items fed (with repeats over epochs).
        losses: mean target-token NLL of each optimizer step's items (before the step).
        frozen_checked: parameters verified bit-identical after training.
        seconds: wall time of the training loop.
        settings: the hyper-parameters used.
    """

    mode: str
    trained_modules: list[str]
    trainable_params: int
    steps: int
    items_seen: int
    losses: list[float]
    frozen_checked: int
    seconds: float
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class _Example:
    fed: tuple[int, ...]  # prompt + target[:-1]
    targets: tuple[int, ...]


def encode_train(items: Sequence[MCItem], tokenizer: Any) -> list[_Example]:
    """Items -> training sequences: ``task_prompt`` tokens followed by the gold choice's tokens (tokenised alone,
    no special tokens, as the paper's script does); the loss is taken on those target tokens."""
    out = []
    for item in items:
        text, special = task_prompt(item, tokenizer)
        prompt = tuple(int(t) for t in tokenizer(text, add_special_tokens=special)["input_ids"])
        target = tuple(int(t) for t in tokenizer(item.answer, add_special_tokens=False)["input_ids"])
        if not target:
            raise TokenizerError(f"tokenizer {tokenizer_name(tokenizer)!r}: the answer {item.answer!r} of item "
                                 f"{item.id!r} encodes to no tokens")
        if not prompt:
            raise TokenizerError(f"tokenizer {tokenizer_name(tokenizer)!r}: item {item.id!r} has an empty prompt")
        out.append(_Example(prompt + target[:-1], target))
    return out


def fingerprint(tensor: torch.Tensor) -> str:
    """BLAKE2b digest of a tensor's bytes (dtype and shape included): equal digests mean bit-identical values."""
    t = tensor.detach().cpu().contiguous().reshape(-1)
    digest = hashlib.blake2b(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"", digest_size=20)
    digest.update(f"{t.dtype}{tuple(tensor.shape)}".encode())
    return digest.hexdigest()


def model_fingerprints(model: nn.Module) -> dict[str, str]:
    """``{parameter name: fingerprint}`` of every parameter (tied parameters once)."""
    return {name: fingerprint(p) for name, p in model.named_parameters()}


def _resolve_modules(model: nn.Module, blocks: Iterable[ModuleBlock]) -> tuple[list[str], list[nn.Linear]]:
    names = target_modules(blocks)
    if not names:
        raise ValueError("no blocks to train")
    by_name = dict(model.named_modules())
    modules = []
    for name in names:
        module = by_name.get(name)
        if not isinstance(module, nn.Linear):
            raise ValueError(f"block module {name!r} is not an nn.Linear of this model "
                             f"({'missing' if module is None else type(module).__name__}); rank_modules on this model")
        modules.append(module)
    return names, modules


def _check_positive(name: str, value: Any, *, allow_none: bool = False, number: bool = False) -> None:
    if allow_none and value is None:
        return
    ok = (isinstance(value, (int, float)) if number else isinstance(value, int)) and not isinstance(value, bool)
    if not ok or not value > 0 or (number and not math.isfinite(value)):
        raise ValueError(f"{name} must be a positive {'number' if number else 'integer'}, got {value!r}")


def _window_loss(model: nn.Module, batch: list[_Example], n_tokens: int, pad: int, keep_kw: bool,
                 device: torch.device) -> torch.Tensor:
    """Summed target-token NLL of ``batch`` divided by ``n_tokens`` (the accumulation window's target tokens)."""
    ids, mask, position_ids = left_pad([ex.fed for ex in batch], pad)
    n_keep = max(len(ex.targets) for ex in batch)
    kwargs = {"logits_to_keep": n_keep} if keep_kw else {}
    out = model(input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=position_ids.to(device),
                use_cache=False, **kwargs)
    logits = out.logits[:, -n_keep:, :]
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # at least fp32, fp64 stays fp64
    targets = torch.zeros((len(batch), n_keep), dtype=torch.int64)
    valid = torch.zeros((len(batch), n_keep), dtype=torch.bool)
    for row, ex in enumerate(batch):  # right-aligned: the last positions predict the target tokens
        targets[row, n_keep - len(ex.targets):] = torch.tensor(ex.targets)
        valid[row, n_keep - len(ex.targets):] = True
    targets, valid = targets.to(logits.device), valid.to(logits.device)
    logp = logits.log_softmax(-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return -torch.where(valid, logp, torch.zeros_like(logp)).sum() / n_tokens


def finetune(
    model: nn.Module,
    tokenizer: Any,
    train_items: Iterable[MCItem],
    blocks: Iterable[ModuleBlock],
    *,
    lora: bool = False,
    epochs: int = 1,
    lr: float = PAPER_LR,
    batch_size: int = PAPER_BATCH_SIZE,
    grad_accum: int = PAPER_GRAD_ACCUM,
    max_steps: int | None = None,
    seed: int = 0,
    lora_r: int = PAPER_LORA["r"],
    lora_alpha: float = PAPER_LORA["alpha"],
    lora_dropout: float = PAPER_LORA["dropout"],
    max_grad_norm: float | None = MAX_GRAD_NORM,
    progress: bool = True,
) -> FinetuneResult:
    """Train the linear modules of ``blocks`` on ``train_items``; every other parameter stays bit-identical.

    Args:
        model: a Hugging Face causal LM; trained in place (LoRA: adapters merged back, same module returned).
        tokenizer: its tokenizer (chat template used when it has one, see ``data.tasks.task_prompt``).
        train_items: ``MCItem``s of the target task (``data.tasks.load_task``).
        blocks: the blocks to train (``modules.pick_modules``' pick or any ``ModuleBlock``s of this model).
        lora: LoRA on the blocks' linear modules (PEFT ``target_modules``) instead of training them in full.
        epochs, lr, batch_size, grad_accum: the paper's 1, 3e-5 (constant), 4, 4 by default.
        max_steps: stop after this many optimizer steps (None: all epochs).
        seed: seeds the data order and the LoRA initialisation.
        lora_r, lora_alpha, lora_dropout: LoRA settings (the paper's 32, 64, 0.0).
        max_grad_norm: gradient clipping (None: off).
        progress: show a tqdm bar.

    Returns:
        ``FinetuneResult``; the model's weights are updated in place.

    Raises:
        ValueError: bad settings or blocks that are not this model's; RuntimeError if a frozen parameter changed.
    """
    items = validate_items(train_items)
    if not items:
        raise ValueError("no training items")
    for name, value in (("epochs", epochs), ("batch_size", batch_size), ("grad_accum", grad_accum),
                        ("lora_r", lora_r)):
        _check_positive(name, value)
    _check_positive("max_steps", max_steps, allow_none=True)
    _check_positive("lr", lr, number=True)
    _check_positive("lora_alpha", lora_alpha, number=True)
    _check_positive("max_grad_norm", max_grad_norm, allow_none=True, number=True)
    if not 0.0 <= lora_dropout < 1.0:
        raise ValueError(f"lora_dropout must be in [0, 1), got {lora_dropout!r}")
    names, modules = _resolve_modules(model, blocks)
    examples = encode_train(items, tokenizer)

    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    was_training = model.training
    picked = {id(p) for m in modules for p in m.parameters()}
    # Parameters that must come back bit-identical, held by reference (PEFT keeps the base modules' parameters).
    frozen = [(name, p, fingerprint(p)) for name, p in model.named_parameters() if lora or id(p) not in picked]
    for p in model.parameters():
        p.requires_grad_(False)
    peft_model = None
    try:
        if lora:
            try:
                from peft import LoraConfig, get_peft_model
                from peft.tuners.lora import LoraLayer
            except ImportError as exc:
                raise ImportError("LoRA needs 'peft': pip install 'culnig_ext[finetune]'") from exc

            config = LoraConfig(r=lora_r, lora_alpha=lora_alpha, lora_dropout=lora_dropout, bias="none",
                                target_modules=names)
            with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
                # PEFT 0.21 asks transformers 5.23 a deprecated question (is_gradient_checkpointing); not ours.
                warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
                torch.manual_seed(seed)
                peft_model = get_peft_model(model, config)
            prefix = "base_model.model."
            trained = [n[len(prefix):] if n.startswith(prefix) else n
                       for n, m in peft_model.named_modules() if isinstance(m, LoraLayer)]
            trainable = [p for p in peft_model.parameters() if p.requires_grad]
        else:
            trained = list(names)
            for m in modules:
                for p in m.parameters():
                    p.requires_grad_(True)
            trainable = [p for m in modules for p in m.parameters()]
        # model (the base) now holds the LoRA layers in place, so it is called directly either way.
        losses, steps, seen, seconds = _train_loop(
            model, examples, trainable, epochs=epochs, lr=lr, batch_size=batch_size, grad_accum=grad_accum,
            max_steps=max_steps, seed=seed, max_grad_norm=max_grad_norm, progress=progress)
        changed = [name for name, p, digest in frozen if fingerprint(p) != digest]
        if changed:
            raise RuntimeError(f"{len(changed)} frozen parameter(s) changed during fine-tuning, e.g. {changed[:3]}")
        if peft_model is not None:
            merged = peft_model.merge_and_unload()
            if merged is not model:
                raise RuntimeError("PEFT returned a different module after merging; the model was not updated")
            peft_model = None
            outside = [name for name, p, digest in frozen if id(p) not in picked and fingerprint(p) != digest]
            if outside:
                raise RuntimeError(f"merging LoRA changed parameters outside the picked modules: {outside[:3]}")
    finally:
        if peft_model is not None:  # an error before merging: take the adapters out, base weights untouched
            peft_model.unload()
        model.train(was_training)
        for name, p in model.named_parameters():
            p.requires_grad_(flags.get(name, False))
    settings = dict(epochs=epochs, lr=lr, batch_size=batch_size, grad_accum=grad_accum, max_steps=max_steps,
                    seed=seed, optimizer="AdamW(betas=(0.9, 0.999), eps=1e-8, weight_decay=0)",
                    schedule="constant", max_grad_norm=max_grad_norm, n_items=len(items))
    if lora:
        settings.update(lora_r=lora_r, lora_alpha=lora_alpha, lora_dropout=lora_dropout)
    return FinetuneResult(
        mode="lora" if lora else "full", trained_modules=trained,
        trainable_params=sum(p.numel() for p in trainable), steps=steps, items_seen=seen, losses=losses,
        frozen_checked=len(frozen), seconds=seconds, settings=settings,
    )


def _train_loop(model: nn.Module, examples: list[_Example], trainable: list[torch.Tensor], *, epochs: int, lr: float,
                batch_size: int, grad_accum: int, max_steps: int | None, seed: int, max_grad_norm: float | None,
                progress: bool) -> tuple[list[float], int, int, float]:
    device = model.get_input_embeddings().weight.device
    pad, keep_kw = pad_id(model), takes_logits_to_keep(model)
    optimizer = torch.optim.AdamW(trainable, lr=lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    generator = torch.Generator().manual_seed(seed)
    window = batch_size * grad_accum
    per_epoch = math.ceil(len(examples) / window)
    total = per_epoch * epochs if max_steps is None else min(max_steps, per_epoch * epochs)
    losses: list[float] = []
    seen = 0
    start = time.perf_counter()
    model.train()
    bar = tqdm(total=total, desc="fine-tuning", unit="step", disable=not progress, dynamic_ncols=True)
    try:
        for _ in range(epochs):
            order = torch.randperm(len(examples), generator=generator).tolist()
            for w in range(0, len(order), window):
                if len(losses) >= total:
                    break
                chunk = [examples[i] for i in order[w:w + window]]
                n_tokens = sum(len(ex.targets) for ex in chunk)
                step_loss = 0.0
                for b in range(0, len(chunk), batch_size):
                    loss = _window_loss(model, chunk[b:b + batch_size], n_tokens, pad, keep_kw, device)
                    loss.backward()
                    step_loss += float(loss.detach())
                if max_grad_norm is not None:
                    torch.nn.utils.clip_grad_norm_(trainable, max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                losses.append(step_loss)
                seen += len(chunk)
                bar.update(1)
                bar.set_postfix(loss=f"{step_loss:.3f}")
    finally:
        bar.close()
        optimizer.zero_grad(set_to_none=True)
    return losses, len(losses), seen, time.perf_counter() - start


__all__ = ["FinetuneResult", "PAPER_GRAD_ACCUM", "PAPER_LORA", "PAPER_LR", "encode_train", "finetune", "fingerprint",
           "model_fingerprints"]
