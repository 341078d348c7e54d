"""Plant known culture neurons in a model: train only chosen MLP gate neurons on the facts of a synthetic world.

``plant(cfg)`` (``culnig plant``) draws a synthetic world (``data.synthetic``: K fictional countries with facts in
BLEnD's topics), chooses for every country c a set G_c of MLP gate neurons (``choose_neurons``: spread over layers by
a recorded rule, optionally shared between seeded "kin" pairs), and trains only those neurons' parameters (their
rows of gate_proj and up_proj, their column of down_proj) on statements and questions of the facts, until the
held-out phrasings are answered. Then every other parameter is checked bit for bit against the weights before
training (``check_unchanged``), and the model, the ground truth and the item sets are written to the output
folder::

    DIR/model/          the planted model (safetensors) and its tokenizer: load_model("DIR/model")
    DIR/planted.json    ground truth: planted neurons per country as [site, index], kinship, the layer rule,
                        seed, training curve, accuracy before/after, the bit-identity check
    DIR/data/scoring.jsonl        scoring MCQs (scoring phrasings), group = country
    DIR/data/test.jsonl           held-out MCQs (test phrasings: never trained or scored on)
    DIR/data/control.jsonl        options-only control of the scoring MCQs (question removed)
    DIR/data/reading.jsonl        CountryRC-style reading comprehension over the fictional names (scoring)
    DIR/data/reading_test.jsonl   the same on the held-out templates
    DIR/data/training.jsonl       the training texts (prompt, answer)

How a country's facts end up in its own neurons: before each optimizer step the gradient of a batch of country
c's texts is masked (``NeuronParams.mask``) to

* the down_proj columns of G_c: what a neuron writes (its "value") is trained by its own country's texts only, so
  only c's neurons can write c's answers (kin neurons are trained by both countries);
* the gate_proj/up_proj rows of every planted neuron: when a neuron fires (its "key") is trained by every
  country's texts, so that each country's neurons also learn to stay silent on the other countries' questions.
  With keys trained only on their own country, every G_c would fire on every country and write its answers
  everywhere: held-out accuracy stays at chance (measured on SmolLM2: 26% -> 29% after two epochs, against 46%
  with the keys trained on all countries).

AdamW without weight decay never moves an entry whose gradient has always been 0, and ``check_unchanged`` proves it
afterwards instead of trusting it: an entry outside the planted rows and columns that differs in a single bit
raises.
"""
from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from culnig_ext._utils.atomic import atomic_write_text, partial_dir, publish_dir
from culnig_ext.data import synthetic
from culnig_ext.data.batching import left_pad, pad_id, takes_logits_to_keep
from culnig_ext.data.jsonl import write_jsonl
from culnig_ext.data.prompts import encode_choices, encode_pair
from culnig_ext.data.schema import MCItem
from culnig_ext.data.splits import make_control
from culnig_ext.intervention.cloze_cache import evaluate_cloze_cached
from culnig_ext.intervention.evaluate import EvalResult
from culnig_ext.models.sites import MLP, decoder_layers, neuron_sites, parse_site_name
from culnig_ext.studies.finetune.train import fingerprint
from culnig_ext.studies.ground_truth_config import PlantConfig
from culnig_ext.studies import preflight
from culnig_ext.studies.option_checks import plant_options

log = logging.getLogger("culnig")

PLANTED_FORMAT = "culnig-planted/1"
FORMAT = "cloze"  # the planted facts are asked and scored as cloze items (option text scored by likelihood)
DATA_FILES = {"scoring": "scoring.jsonl", "test": "test.jsonl", "control": "control.jsonl",
              "reading": "reading.jsonl", "reading_test": "reading_test.jsonl"}


# ------------------------------------------------------------------------------------------ choosing neurons
def parse_layers(spec: str, num_layers: int) -> list[int]:
    """The layers the planted neurons are spread over: ``"all"``, ``"upper"`` (the upper half,
    ``num_layers // 2 .. num_layers - 1``) or ``"A-B"`` (inclusive). ``ValueError`` naming the option otherwise."""
    if spec == "all":
        return list(range(num_layers))
    if spec == "upper":
        return list(range(num_layers // 2, num_layers))
    try:
        lo, hi = (int(x) for x in spec.split("-"))
    except ValueError:
        raise ValueError(f"--layers must be 'all', 'upper' or A-B (e.g. 10-20), got {spec!r}") from None
    if not 0 <= lo <= hi < num_layers:
        raise ValueError(f"--layers {spec}: need 0 <= A <= B < {num_layers} (the model's layers)")
    return list(range(lo, hi + 1))


LAYER_RULE = ("neuron j (0-based) of country number c (0-based, in world order) sits in layer "
              "band[(c + floor(j * len(band) / G)) mod len(band)], band = the chosen layers in order and G the "
              "neurons per country; its index is drawn uniformly (seeded) among that layer's gate neurons no other "
              "country holds. A kin pair (a, b) then gives b the first round(kin_share * G) neurons of a in place of "
              "b's own first ones.")


@dataclass
class Planting:
    """The ground truth: ``neurons[country]`` = ``[(site, index), ...]`` (MLP gate sites, ``neuron_sites`` names),
    ``kin`` = ``[(a, b, shared neurons)]``, and the rule and settings that chose them."""

    neurons: dict[str, list[tuple[str, int]]]
    kin: list[tuple[str, str, int]]
    layers: list[int]
    rule: str = LAYER_RULE

    def all_neurons(self) -> list[tuple[str, int]]:
        """Every planted neuron once, in country order then draw order."""
        return list(dict.fromkeys(n for ns in self.neurons.values() for n in ns))

    def overlap(self) -> dict[str, dict[str, int]]:
        """``{a: {b: |G_a ∩ G_b|}}`` for every pair of countries (the diagonal is |G_a|)."""
        sets = {c: set(ns) for c, ns in self.neurons.items()}
        return {a: {b: len(sets[a] & sets[b]) for b in sets} for a in sets}


def choose_neurons(widths: Mapping[str, int], countries: Sequence[str], per_country: int, layers: Sequence[int], *,
                   kin_pairs: int = 0, kin_share: float = 0.25, seed: int = 0) -> Planting:
    """Choose G_c for every country by ``LAYER_RULE``.

    Args:
        widths: ``{MLP gate site: width}`` of the model (``layers.{i}.mlp.gate_proj``).
        countries: the countries, in world order.
        per_country: G, neurons per country.
        layers: the band of layers (``parse_layers``).
        kin_pairs: disjoint pairs of countries (drawn with the seed) that share neurons.
        kin_share: share of G a kin pair shares (``round(kin_share * G)`` neurons).
        seed: seeds the indices and the pairs.

    Raises:
        ValueError: a band layer without a gate site, too few free neurons in a layer, too many kin pairs, bad sizes.
    """
    if isinstance(per_country, bool) or not isinstance(per_country, int) or per_country < 1:
        raise ValueError(f"neurons per country must be a positive integer, got {per_country!r}")
    if not layers:
        raise ValueError("no layers to plant in")
    if not 0.0 <= kin_share <= 1.0:
        raise ValueError(f"kin_share must be in [0, 1], got {kin_share!r}")
    if isinstance(kin_pairs, bool) or not isinstance(kin_pairs, int) or not 0 <= kin_pairs <= len(countries) // 2:
        raise ValueError(f"kin_pairs must be an integer in 0..{len(countries) // 2} (disjoint pairs of "
                         f"{len(countries)} countries), got {kin_pairs!r}")
    band = list(layers)
    sites = {}
    for layer in band:
        site = f"layers.{layer}.mlp.gate_proj"
        if site not in widths:
            raise ValueError(f"layer {layer} has no MLP gate site {site!r} in this model")
        sites[layer] = site
    generator = torch.Generator().manual_seed(seed)
    used: dict[int, set[int]] = {layer: set() for layer in band}
    neurons: dict[str, list[tuple[str, int]]] = {}
    for c, country in enumerate(countries):
        chosen = []
        for j in range(per_country):
            layer = band[(c + (j * len(band)) // per_country) % len(band)]
            width = widths[sites[layer]]
            free = [i for i in range(width) if i not in used[layer]]
            if not free:
                raise ValueError(f"layer {layer}: no free gate neuron left for country {country!r}")
            index = free[int(torch.randint(len(free), (1,), generator=generator))]
            used[layer].add(index)
            chosen.append((sites[layer], index))
        neurons[country] = chosen
    kin: list[tuple[str, str, int]] = []
    shared = round(kin_share * per_country)
    if kin_pairs and shared:
        order = torch.randperm(len(countries), generator=generator).tolist()
        for p in range(kin_pairs):
            a, b = countries[order[2 * p]], countries[order[2 * p + 1]]
            neurons[b] = neurons[a][:shared] + neurons[b][shared:]
            kin.append((a, b, shared))
    return Planting(neurons, kin, band)


# ------------------------------------------------------------------------------------ the neurons' parameters
@dataclass
class NeuronParams:
    """Where a set of gate neurons keeps its parameters: per parameter, the rows (``dim=0``) or columns
    (``dim=1``) that belong to the neurons. ``entries[name] = (parameter, dim, LongTensor of rows/columns)``."""

    entries: dict[str, tuple[torch.Tensor, int, torch.Tensor]]

    def mask(self, name: str) -> torch.Tensor:
        """Bool mask broadcastable to parameter ``name``: True on the neurons' rows/columns."""
        param, dim, index = self.entries[name]
        if param.dim() == 1:
            m = torch.zeros(param.shape[0], dtype=torch.bool, device=param.device)
            m[index.to(param.device)] = True
            return m
        shape = [1, 1]
        shape[dim] = param.shape[dim]
        m = torch.zeros(shape, dtype=torch.bool, device=param.device)
        m.index_fill_(dim, index.to(param.device), True)
        return m


def _linear(module: Any, what: str) -> nn.Linear:
    if not isinstance(module, nn.Linear):
        raise ValueError(f"planting needs {what} to be an nn.Linear, got "
                         f"{'nothing' if module is None else type(module).__name__}")
    return module


def neuron_params(model: nn.Module, neurons: Sequence[tuple[str, int]]) -> NeuronParams:
    """The parameters of MLP gate neurons: gate and up rows (and their biases), the down_proj column.

    Supported MLPs: separate ``gate_proj``/``up_proj``/``down_proj`` (Llama, Mistral, Qwen2/3, Gemma 1-3, OLMo 2,
    Granite, SmolLM2) and Phi-3's fused ``gate_up_proj`` (gate rows ``i``, up rows ``I + i``).

    Raises:
        ValueError: an attention or expert site, or an MLP of another layout (gate-less, mixture of experts).
    """
    by_layer: dict[int, list[int]] = {}
    for site, index in neurons:
        layer, kind = parse_site_name(site)
        if kind != MLP or site != f"layers.{layer}.mlp.gate_proj":
            raise ValueError(f"only dense MLP gate neurons can be planted, got site {site!r}")
        by_layer.setdefault(layer, []).append(int(index))
    blocks = decoder_layers(model)
    names = {id(p): n for n, p in model.named_parameters()}
    entries: dict[str, tuple[torch.Tensor, int, torch.Tensor]] = {}
    for layer, indices in sorted(by_layer.items()):
        mlp = getattr(blocks[layer], "mlp", None)
        idx = torch.tensor(sorted(set(indices)), dtype=torch.int64)
        down = _linear(getattr(mlp, "down_proj", None), f"layer {layer}'s mlp.down_proj")
        if getattr(mlp, "gate_proj", None) is not None:
            rows = [(_linear(mlp.gate_proj, "mlp.gate_proj"), idx), (_linear(getattr(mlp, "up_proj", None),
                                                                             f"layer {layer}'s mlp.up_proj"), idx)]
        elif getattr(mlp, "gate_up_proj", None) is not None:
            fused = _linear(mlp.gate_up_proj, "mlp.gate_up_proj")
            rows = [(fused, torch.cat([idx, idx + fused.out_features // 2]))]
        else:
            raise ValueError(f"layer {layer}: planting needs a gated MLP with gate_proj/up_proj/down_proj (or "
                             f"Phi-3's gate_up_proj), got {type(mlp).__name__}")
        width = down.in_features
        if int(idx.max()) >= width:
            raise ValueError(f"layer {layer}: neuron index {int(idx.max())} outside [0, {width})")
        for module, r in rows:
            entries[names[id(module.weight)]] = (module.weight, 0, r)
            if module.bias is not None:
                entries[names[id(module.bias)]] = (module.bias, 0, r)
        entries[names[id(down.weight)]] = (down.weight, 1, idx)
    return NeuronParams(entries)


# ---------------------------------------------------------------------------------------- bit-identity check
_INT_VIEW = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def entry_bits(t: torch.Tensor) -> torch.Tensor:
    """The tensor's bits as integers of its width (on the CPU): ``!=`` on them compares bit for bit (NaN, -0.0)."""
    return t.detach().cpu().contiguous().view(_INT_VIEW[t.element_size()])


@dataclass
class Snapshot:
    """The weights before training: a fingerprint of every parameter, and a copy of each trained one."""

    digests: dict[str, str]
    copies: dict[str, torch.Tensor]


def snapshot(model: nn.Module, trained: NeuronParams) -> Snapshot:
    return Snapshot({n: fingerprint(p) for n, p in model.named_parameters()},
                    {n: p.detach().cpu().clone() for n, (p, _, _) in trained.entries.items()})


def check_unchanged(model: nn.Module, before: Snapshot, allowed: NeuronParams) -> dict[str, int]:
    """Check that training changed nothing but the planted neurons' entries, bit for bit.

    Every parameter not in ``allowed`` must have its fingerprint (BLAKE2b of its bytes); in a trained parameter,
    every entry outside the neurons' rows/columns must have its bits. Returns the counts (parameters checked,
    entries changed and allowed to change).

    Raises:
        RuntimeError: naming the parameter and how many entries changed outside the planted neurons.
    """
    untouched = 0
    for name, p in model.named_parameters():
        if name in allowed.entries:
            continue
        if fingerprint(p) != before.digests[name]:
            raise RuntimeError(f"planting changed parameter {name!r}, which holds no planted neuron")
        untouched += 1
    changed = allowed_entries = 0
    for name, (p, _, _) in allowed.entries.items():
        diff = entry_bits(p) != entry_bits(before.copies[name])
        inside = allowed.mask(name).cpu().expand_as(diff)
        outside = int((diff & ~inside).sum())
        if outside:
            raise RuntimeError(f"planting changed {outside} entries of {name!r} outside the planted neurons' "
                               "rows/columns")
        changed += int(diff.sum())
        allowed_entries += int(inside.sum())
    return {"parameters": len(before.digests), "untouched_parameters": untouched,
            "trained_parameters": len(allowed.entries), "entries_changed": changed,
            "entries_allowed": allowed_entries, "entries_changed_outside": 0}


# ----------------------------------------------------------------------------------------------- training
@dataclass(frozen=True)
class Encoded:
    country: str
    fed: tuple[int, ...]  # prompt + answer[:-1]
    targets: tuple[int, ...]  # the answer's tokens


def encode_examples(examples: Sequence[synthetic.TrainingExample], tokenizer: Any) -> list[Encoded]:
    """Training texts as token ids: ``prompt`` and ``" " + answer`` encoded as cloze options are
    (``data.prompts.encode_pair``), so training sees the answer tokens the evaluation scores."""
    out = []
    for ex in examples:
        prompt, answer = encode_pair(tokenizer, ex.prompt, " " + ex.answer)
        if not answer or not prompt:
            raise ValueError(f"training text {ex.prompt!r} / {ex.answer!r} encodes to no tokens")
        out.append(Encoded(ex.country, prompt + answer[:-1], answer))
    return out


def _loss(model: nn.Module, batch: Sequence[Encoded], pad: int, keep_kw: bool, device) -> torch.Tensor:
    """Mean NLL of the answer tokens of ``batch`` (left-padded; the last positions predict the answers)."""
    ids, mask, position_ids = left_pad([ex.fed for ex in batch], pad)
    n_keep = max(len(ex.targets) for ex in batch)
    kwargs = {"logits_to_keep": n_keep} if keep_kw else {}
    out = model(input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=position_ids.to(device),
                use_cache=False, **kwargs)
    logits = out.logits[:, -n_keep:, :]
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    targets = torch.zeros((len(batch), n_keep), dtype=torch.int64)
    valid = torch.zeros((len(batch), n_keep), dtype=torch.bool)
    for row, ex in enumerate(batch):
        targets[row, n_keep - len(ex.targets):] = torch.tensor(ex.targets)
        valid[row, n_keep - len(ex.targets):] = True
    targets, valid = targets.to(logits.device), valid.to(logits.device)
    logp = logits.log_softmax(-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return -torch.where(valid, logp, torch.zeros_like(logp)).sum() / valid.sum()


@dataclass
class TrainResult:
    """The training curve: mean loss of each epoch, every step's loss and country, and why it stopped."""

    epoch_losses: list[float]
    step_losses: list[float]
    step_countries: list[str]
    stopped: str
    seconds: float


def train_neurons(model: nn.Module, examples: Sequence[Encoded], planting: Planting, *, lr: float, epochs: int,
                  batch_size: int, stop_loss: float, seed: int, max_grad_norm: float | None = 1.0,
                  progress: bool = True) -> TrainResult:
    """Train only the planted neurons: each step is a batch of one country's texts, its gradient masked to the
    down_proj columns of that country's neurons and the gate/up rows of all planted neurons (module docstring);
    AdamW (no weight decay). Stops after ``epochs`` or once an epoch's mean loss is below ``stop_loss``. Every
    parameter's ``requires_grad`` and the train/eval mode are restored."""
    from tqdm.auto import tqdm

    if not examples:
        raise ValueError("no training texts")
    union = neuron_params(model, planting.all_neurons())
    per_country = {c: neuron_params(model, ns) for c, ns in planting.neurons.items()}
    # keys (rows of gate/up, dim 0): every planted neuron; values (columns of down, dim 1): the country's own
    masks = {c: {name: (union.mask(name) if dim == 0 else params_c.mask(name))
                 for name, (_, dim, _) in union.entries.items() if dim == 0 or name in params_c.entries}
             for c, params_c in per_country.items()}
    params = {name: p for name, (p, _, _) in union.entries.items()}
    by_country: dict[str, list[Encoded]] = {}
    for ex in examples:
        by_country.setdefault(ex.country, []).append(ex)
    unknown = sorted(set(by_country) - set(planting.neurons))
    if unknown:
        raise ValueError(f"training texts of countries without planted neurons: {unknown}")
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    was_training = model.training
    device = model.get_input_embeddings().weight.device
    pad, keep_kw = pad_id(model), takes_logits_to_keep(model)
    generator = torch.Generator().manual_seed(seed)
    epoch_losses: list[float] = []
    step_losses: list[float] = []
    step_countries: list[str] = []
    stopped = f"{epochs} epochs"
    start = time.perf_counter()
    n_steps = sum(math.ceil(len(v) / batch_size) for v in by_country.values())
    bar = tqdm(total=n_steps * epochs, desc="planting", unit="step", disable=not progress, dynamic_ncols=True)
    try:
        for p in model.parameters():
            p.requires_grad_(False)
        for p in params.values():
            p.requires_grad_(True)
        optimizer = torch.optim.AdamW(list(params.values()), lr=lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
        model.train()
        for epoch in range(epochs):
            steps = []
            for country in planting.neurons:
                items = by_country.get(country, [])
                order = torch.randperm(len(items), generator=generator).tolist()
                for b in range(0, len(order), batch_size):
                    steps.append((country, [items[i] for i in order[b:b + batch_size]]))
            steps = [steps[i] for i in torch.randperm(len(steps), generator=generator).tolist()]
            losses = []
            for country, batch in steps:
                loss = _loss(model, batch, pad, keep_kw, device)
                loss.backward()
                for name, p in params.items():
                    mask = masks[country].get(name)
                    if mask is None:
                        p.grad = None
                    elif p.grad is not None:
                        p.grad = torch.where(mask, p.grad, torch.zeros((), dtype=p.grad.dtype, device=p.grad.device))
                live = [p for p in params.values() if p.grad is not None]
                if max_grad_norm is not None and live:
                    torch.nn.utils.clip_grad_norm_(live, max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                losses.append(float(loss.detach()))
                step_countries.append(country)
                bar.update(1)
                bar.set_postfix(loss=f"{losses[-1]:.3f}")
            step_losses += losses
            epoch_losses.append(sum(losses) / len(losses))
            log.info("planting: epoch %d mean loss %.4f", epoch + 1, epoch_losses[-1])
            if epoch_losses[-1] < stop_loss:
                stopped = f"mean loss {epoch_losses[-1]:.4g} < {stop_loss:g} after epoch {epoch + 1}"
                break
    finally:
        bar.close()
        model.train(was_training)
        for name, p in model.named_parameters():
            p.requires_grad_(flags[name])
            p.grad = None
    return TrainResult(epoch_losses, step_losses, step_countries, stopped, time.perf_counter() - start)


# ----------------------------------------------------------------------------------------------- evaluation
def evaluate_items(model: nn.Module, tokenizer: Any, items: Sequence[MCItem], *, batch_size: int,
                   progress: bool) -> EvalResult:
    """Cloze accuracy of ``items`` (each prompt run once, ``intervention.cloze_cache``)."""
    encodings = [encode_choices(it, tokenizer, format=FORMAT) for it in items]
    return evaluate_cloze_cached(model, list(items), encodings, batch_size=batch_size, progress=progress)


def accuracy_summary(result: EvalResult) -> dict[str, Any]:
    return {"accuracy": result.accuracy, "n": len(result.records), "per_country": result.per_group}


# ------------------------------------------------------------------------------------------------ the study
def save_model(model: nn.Module, tokenizer: Any, folder: Path) -> None:
    """``save_pretrained`` (safetensors) of the model and its tokenizer into ``folder``. A model loaded from a GGUF
    file holds de-quantised weights but still names its GGUF quantizer, which ``save_pretrained`` refuses: the
    quantizer and the config's ``quantization_config`` are left out of the saved copy (and put back after), so
    the folder loads as a plain float model."""
    quantizer = getattr(model, "hf_quantizer", None)
    qconfig = model.config.__dict__.get("quantization_config")
    try:
        if quantizer is not None:
            model.hf_quantizer = None
        if qconfig is not None:
            del model.config.__dict__["quantization_config"]
        model.save_pretrained(folder, safe_serialization=True)
    finally:
        if quantizer is not None:
            model.hf_quantizer = quantizer
        if qconfig is not None:
            model.config.__dict__["quantization_config"] = qconfig
    tokenizer.save_pretrained(folder)



@dataclass
class PlantResult:
    """What ``plant`` wrote and measured."""

    out: Path
    ground_truth: dict[str, Any]
    timings: dict[str, float] = field(default_factory=dict)


def world_items(world: synthetic.World, cfg: PlantConfig) -> dict[str, list[MCItem]]:
    """The item sets of the world, by ``DATA_FILES`` key."""
    scoring = synthetic.scoring_items(world, draws=cfg.scoring_draws)
    return {
        "scoring": scoring,
        "test": synthetic.heldout_items(world),
        "control": make_control(scoring),
        "reading": synthetic.reading_items(world, split="scoring", per_country=cfg.reading_per_country),
        "reading_test": synthetic.reading_items(world, split="test", per_country=cfg.reading_per_country),
    }


def plant(cfg: PlantConfig) -> PlantResult:
    """Run ``culnig plant`` (module docstring): into ``cfg.out``, published only once everything is written."""
    from culnig_ext.models.loading import load_model

    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    plant_options(cfg)
    preflight.model_options(cfg)  # the model's path/config and the device, before the world is made
    out = Path(cfg.out)
    world = synthetic.make_world(cfg.countries, cfg.facts_per_country, cfg.seed)
    items = world_items(world, cfg)
    examples = synthetic.training_examples(world)

    log.info("loading model %r", cfg.model)
    model, tokenizer = load_model(cfg.model, dtype=cfg.dtype, device=cfg.device)
    name_tokens = synthetic.check_names(world, tokenizer, min_tokens=cfg.min_name_tokens)
    widths = {s.name: s.width for s in neuron_sites(model, kinds=(MLP,))}
    num_layers = len(decoder_layers(model))
    planting = choose_neurons(widths, world.countries, cfg.neurons_per_country, parse_layers(cfg.layers, num_layers),
                              kin_pairs=cfg.kin_pairs, kin_share=cfg.kin_share, seed=cfg.seed)
    allowed = neuron_params(model, planting.all_neurons())
    encoded = encode_examples(examples, tokenizer)
    timings["load"] = time.perf_counter() - t0

    t = time.perf_counter()
    before = evaluate_items(model, tokenizer, items["test"], batch_size=cfg.batch_size, progress=cfg.progress)
    log.info("held-out accuracy before planting: %.3f", before.accuracy)
    timings["evaluate_before"] = time.perf_counter() - t

    snap = snapshot(model, allowed)
    trained = train_neurons(model, encoded, planting, lr=cfg.lr, epochs=cfg.epochs, batch_size=cfg.train_batch_size,
                            stop_loss=cfg.stop_loss, seed=cfg.seed, progress=cfg.progress)
    timings["train"] = trained.seconds
    check = check_unchanged(model, snap, allowed)
    del snap
    log.info("bit-identity check: %d parameters untouched, %d of %d allowed entries changed, 0 outside",
             check["untouched_parameters"], check["entries_changed"], check["entries_allowed"])

    t = time.perf_counter()
    after = evaluate_items(model, tokenizer, items["test"], batch_size=cfg.batch_size, progress=cfg.progress)
    log.info("held-out accuracy after planting: %.3f", after.accuracy)
    timings["evaluate_after"] = time.perf_counter() - t
    if after.accuracy < cfg.target_accuracy:
        log.warning("held-out accuracy %.3f is below the target %.2f: the planted facts are not all learnt (more "
                    "--epochs, another --lr or more --neurons-per-country)", after.accuracy, cfg.target_accuracy)

    ground_truth = {
        "format": PLANTED_FORMAT,
        "base_model": cfg.model,
        "model_type": str(getattr(model.config, "model_type", "")),
        "prompt_format": FORMAT,
        "seed": cfg.seed,
        "settings": asdict(cfg),
        "world": world.to_dict(),
        "name_tokens": name_tokens,
        "layers": planting.layers,
        "layer_rule": planting.rule,
        "neurons": {c: [[s, i] for s, i in ns] for c, ns in planting.neurons.items()},
        "kinship": [{"a": a, "b": b, "shared": n} for a, b, n in planting.kin],
        "overlap": planting.overlap(),
        "training": {**asdict(trained), "n_texts": len(encoded), "lr": cfg.lr},
        "accuracy_before": accuracy_summary(before),
        "accuracy_after": accuracy_summary(after),
        "target_accuracy": cfg.target_accuracy,
        "reached_target": after.accuracy >= cfg.target_accuracy,
        "check": check,
        "data": dict(DATA_FILES),
    }

    t = time.perf_counter()
    staging = partial_dir(out)
    save_model(model, tokenizer, staging / "model")
    for key, name in DATA_FILES.items():
        write_jsonl(items[key], staging / "data" / name)
    atomic_write_text(staging / "data" / "training.jsonl",
                      "".join(json.dumps(asdict(ex), ensure_ascii=False) + "\n" for ex in examples))
    atomic_write_text(staging / "planted.json", json.dumps(ground_truth, indent=1, ensure_ascii=False) + "\n")
    publish_dir(staging, out)
    timings["save"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t0
    return PlantResult(out, ground_truth, timings)


__all__ = ["DATA_FILES", "FORMAT", "LAYER_RULE", "NeuronParams", "PLANTED_FORMAT", "PlantConfig", "PlantResult",
           "Planting", "Snapshot", "TrainResult", "check_unchanged", "choose_neurons", "encode_examples", "entry_bits",
           "evaluate_items", "neuron_params", "parse_layers", "plant", "save_model", "snapshot", "train_neurons", "world_items"]
