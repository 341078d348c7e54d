"""Multiple-choice evaluation: accuracy (overall and per group), acc_norm for cloze, alignment for value items.

Two formats, as encoded by ``culnig_ext.data.prompts.encode_choices``:

- ``"letter"``: the prompt lists the options with letters; the prediction is the argmax of the next-token logits
  at the prompt's last position over the *full vocabulary* (as the CULNIG reference does: a non-letter token is
  simply wrong), or over the option letters only (``restrict_to_choices=True``). Correct iff the predicted token
  is the gold letter's token.
- ``"cloze"``: each option is scored by its log-likelihood given the prompt (sum of the option tokens' log-probs,
  teacher forcing). ``acc`` takes the argmax of the sums; ``acc_norm`` the argmax of the sums divided by the
  option's length in characters, as lm-evaluation-harness does (``completion_len = [float(len(c)) for c in
  choices]`` in ``lm_eval/api/task.py``: Python string length of the choice text, without the target delimiter,
  i.e. characters, not bytes and not tokens). Ties go to the first option, as ``np.argmax``.

Batching: sequences are sorted by length and left-padded, with an attention mask and explicit ``position_ids``
(``cumsum(mask) - 1``, clamped at 0), so the results do not depend on padding or batch size beyond float rounding.
Logits are computed only at the positions that are read (``logits_to_keep`` where the model takes it).

Alignment (WorldValuesBench-style, for items whose ``values`` are set): with predicted value ``p = values[pred]``
and gold ``g = values[answer_idx]``, ``score = (1 - |p - g| / max(|min - g|, |max - g|)) * 100`` (min/max over the
item's values); a prediction that is no option scores 0, as an unparseable answer does in the reference.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from culnig_ext._utils.progress import bar as progress_bar
from culnig_ext._utils.atomic import atomic_write_text
from culnig_ext.data.batching import left_pad, length_sorted_batches, pad_id, takes_logits_to_keep, vocab_size
from culnig_ext.data.prompts import encode_choices
from culnig_ext._utils.textfile import utf8_errors
from culnig_ext.data.frames import eval_from_pandas, eval_html, eval_to_pandas

FORMATS = ("letter", "cloze")
RESULT_FORMAT = "culnig-eval/1"


# ----------------------------------------------------------------------------------------------- results
@dataclass
class ItemRecord:
    """The outcome of one item.

    Attributes:
        id, group: the item's id and group.
        answer_idx: the gold option.
        pred: the predicted option, or None (letter format, full vocabulary: the argmax token is no option letter).
        correct: whether the prediction is the gold answer.
        option_scores: per option, letter format: ``log P(letter token | prompt)`` (softmax over the full
            vocabulary); cloze: the option's summed log-likelihood.
        predicted_token: letter format: the argmax token id (over the vocabulary or the letters); cloze: None.
        pred_norm, correct_norm: cloze only: the length-normalised prediction and whether it is right.
        alignment: the alignment score in [0, 100] for items with values, else None.
    """

    id: str
    group: str
    answer_idx: int
    pred: int | None
    correct: bool
    option_scores: list[float]
    predicted_token: int | None = None
    pred_norm: int | None = None
    correct_norm: bool | None = None
    alignment: float | None = None


def _mean(values: Sequence[float]) -> float:
    return float(sum(values) / len(values)) if values else float("nan")


def _jsonable_float(x: float) -> float | str:
    return x if math.isfinite(x) else repr(float(x))  # 'inf', '-inf', 'nan': JSON has no literals for them


def _float_from_json(x: float | str) -> float:
    return float(x)


@dataclass
class EvalResult:
    """Per-item records and the accuracies derived from them.

    Attributes:
        records: one ``ItemRecord`` per item, in input order.
        format: ``"letter"`` or ``"cloze"``.
        restrict_to_choices: letter format: whether the argmax was over the option letters only.
        control: the prompt control used (``None``, ``"empty"``, ``"frame"``).
        metadata: strings, e.g. the model name.
    """

    records: list[ItemRecord]
    format: str
    restrict_to_choices: bool = False
    control: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)

    # ------------------------------------------------------------------------------------- summaries
    @property
    def groups(self) -> list[str]:
        """Group names in order of first appearance."""
        return list(dict.fromkeys(r.group for r in self.records))

    @property
    def correct(self) -> np.ndarray:
        """``bool [I]``: per-item correctness in record order (the input of ``stats.paired_bootstrap``)."""
        return np.array([r.correct for r in self.records], dtype=bool)

    @property
    def correct_norm(self) -> np.ndarray | None:
        """``bool [I]`` acc_norm correctness (cloze), else None."""
        if self.format != "cloze":
            return None
        return np.array([bool(r.correct_norm) for r in self.records], dtype=bool)

    @property
    def accuracy(self) -> float:
        """Share of items predicted correctly."""
        return _mean([float(r.correct) for r in self.records])

    @property
    def per_group(self) -> dict[str, float]:
        """``{group: accuracy}`` in order of first appearance."""
        return {g: _mean([float(r.correct) for r in self.records if r.group == g]) for g in self.groups}

    @property
    def acc_norm(self) -> float | None:
        """Length-normalised accuracy (cloze), else None."""
        if self.format != "cloze":
            return None
        return _mean([float(bool(r.correct_norm)) for r in self.records])

    @property
    def per_group_norm(self) -> dict[str, float] | None:
        if self.format != "cloze":
            return None
        return {g: _mean([float(bool(r.correct_norm)) for r in self.records if r.group == g]) for g in self.groups}

    @property
    def alignment(self) -> float | None:
        """Mean alignment score over the items with values (None when no item has values)."""
        scores = [r.alignment for r in self.records if r.alignment is not None]
        return _mean(scores) if scores else None

    @property
    def per_group_alignment(self) -> dict[str, float] | None:
        if self.alignment is None:
            return None
        out = {}
        for g in self.groups:
            scores = [r.alignment for r in self.records if r.group == g and r.alignment is not None]
            if scores:
                out[g] = _mean(scores)
        return out

    def summary(self) -> dict[str, Any]:
        """The aggregate numbers as a plain dict."""
        return {
            "n_items": len(self.records),
            "accuracy": self.accuracy,
            "per_group": self.per_group,
            "acc_norm": self.acc_norm,
            "per_group_norm": self.per_group_norm,
            "alignment": self.alignment,
            "per_group_alignment": self.per_group_alignment,
        }

    # ---------------------------------------------------------------------------------------- as data
    def to_pandas(self):
        """One row per item record (``culnig_ext.data.frames.RECORD_COLUMNS``); format and metadata in ``attrs``."""
        return eval_to_pandas(self)

    @classmethod
    def from_pandas(cls, df) -> "EvalResult":
        return eval_from_pandas(df, cls, ItemRecord)

    def _repr_html_(self) -> str:
        return eval_html(self)

    # ---------------------------------------------------------------------------------------- storage
    def to_dict(self) -> dict[str, Any]:
        records = []
        for r in self.records:
            d = asdict(r)
            d["option_scores"] = [_jsonable_float(x) for x in r.option_scores]
            records.append(d)
        return {
            "format_version": RESULT_FORMAT,
            "format": self.format,
            "restrict_to_choices": self.restrict_to_choices,
            "control": self.control,
            "metadata": dict(self.metadata),
            "summary": self.summary(),
            "records": records,
        }

    @classmethod
    def from_dict(cls, obj: Mapping[str, Any], *, where: str = "<dict>") -> "EvalResult":
        if obj.get("format_version") != RESULT_FORMAT:
            raise ValueError(f"{where}: not an evaluation result (format_version={obj.get('format_version')!r})")
        records = []
        names = set(ItemRecord.__dataclass_fields__)
        for i, raw in enumerate(obj.get("records", [])):
            missing = [k for k in ("id", "group", "answer_idx", "pred", "correct", "option_scores") if k not in raw]
            if missing:
                raise ValueError(f"{where}: record {i}: missing field(s) {missing}")
            raw = {k: v for k, v in raw.items() if k in names}
            raw["option_scores"] = [_float_from_json(x) for x in raw["option_scores"]]
            records.append(ItemRecord(**raw))
        return cls(
            records=records,
            format=obj["format"],
            restrict_to_choices=bool(obj.get("restrict_to_choices", False)),
            control=obj.get("control"),
            metadata=dict(obj.get("metadata", {})),
        )

    def save(self, path: str | os.PathLike) -> None:
        """Write as JSON, atomically."""
        atomic_write_text(path, json.dumps(self.to_dict(), indent=1, allow_nan=False) + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike) -> "EvalResult":
        with utf8_errors(path), open(path, encoding="utf-8") as f:
            try:
                obj = json.load(f)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}: line {exc.lineno}: not valid JSON ({exc.msg})") from exc
        return cls.from_dict(obj, where=str(path))


# ------------------------------------------------------------------------------------------- helpers
def alignment_score(pred_value: float, gold_value: float, low: float, high: float) -> float:
    """``(1 - |p - g| / max(|low - g|, |high - g|)) * 100`` (WorldValuesBench alignment)."""
    span = max(abs(low - gold_value), abs(high - gold_value))
    if span == 0:
        raise ValueError(f"alignment undefined: the scale [{low}, {high}] has no spread around gold {gold_value}")
    return (1.0 - abs(pred_value - gold_value) / span) * 100.0


def item_alignment(item: Any, pred: int | None, where: str) -> float | None:
    values = getattr(item, "values", None)
    if values is None:
        return None
    values = [float(v) for v in values]
    if len(values) != len(item.choices):
        raise ValueError(f"{where}: 'values' has {len(values)} entries for {len(item.choices)} choices")
    if pred is None:
        return 0.0
    try:
        return alignment_score(values[pred], values[item.answer_idx], min(values), max(values))
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None


def _ids(seq: Any, where: str, vocab: int | None) -> tuple[int, ...]:
    try:
        ids = tuple(int(t) for t in seq)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where}: token ids must be integers ({exc})") from None
    if vocab is not None:
        bad = [t for t in ids if not 0 <= t < vocab]
        if bad:
            raise ValueError(f"{where}: token id {bad[0]} outside the vocabulary [0, {vocab})")
    return ids


@dataclass
class _Seq:
    item: int  # position in the item list
    option: int  # cloze: option index; letter: -1
    fed: tuple[int, ...]
    targets: tuple[int, ...]  # cloze: the option's tokens; letter: ()


def choice_sequences(items: Sequence[Any], encodings: Sequence[Any], fmt: str, vocab: int | None):
    """Validate items/encodings and build the sequences to run, plus per-item letter ids (letter format)."""
    seqs: list[_Seq] = []
    letters: list[tuple[int, ...]] = []
    seen: dict[str, int] = {}
    for pos, (item, enc) in enumerate(zip(items, encodings)):
        where = f"item {getattr(item, 'id', '<no id>')!r} (position {pos})"
        for attr in ("id", "group", "choices", "answer_idx"):
            if not hasattr(item, attr):
                raise ValueError(f"{where}: missing field {attr!r}")
        if item.id in seen:
            raise ValueError(f"{where}: duplicate id (first at position {seen[item.id]})")
        seen[item.id] = pos
        n = len(item.choices)
        if not isinstance(item.answer_idx, (int, np.integer)) or not 0 <= item.answer_idx < n:
            raise ValueError(f"{where}: answer_idx {item.answer_idx!r} outside [0, {n})")
        prompt = _ids(enc.prompt_ids, f"{where}: prompt_ids", vocab)
        if not prompt:
            raise ValueError(f"{where}: empty prompt")
        if fmt == "letter":
            if enc.letter_ids is None:
                raise ValueError(f"{where}: the encoding has no letter_ids (was it encoded with format='cloze'?)")
            ids = _ids(enc.letter_ids, f"{where}: letter_ids", vocab)
            if len(ids) != n:
                raise ValueError(f"{where}: {len(ids)} letter ids for {n} choices")
            if len(set(ids)) != n:
                raise ValueError(f"{where}: option letters share a token id {ids}")
            letters.append(ids)
            seqs.append(_Seq(pos, -1, prompt, ()))
        else:
            if len(enc.choice_ids) != n:
                raise ValueError(f"{where}: {len(enc.choice_ids)} encoded choices for {n} choices")
            for k, choice in enumerate(enc.choice_ids):
                targets = _ids(choice, f"{where}: choice {k}", vocab)
                if not targets:
                    raise ValueError(f"{where}: choice {k} encodes to no tokens")
                if len(item.choices[k]) == 0:
                    raise ValueError(f"{where}: choice {k} is empty text (acc_norm divides by its length)")
                seqs.append(_Seq(pos, k, prompt + targets[:-1], targets))
    return seqs, letters


def _batches(seqs: list[_Seq], batch_size: int):
    for rows in length_sorted_batches([len(s.fed) for s in seqs], batch_size):
        yield [seqs[i] for i in rows]


def upcast_logits(logits: torch.Tensor) -> torch.Tensor:
    """At least float32 for log-probabilities (float64 stays float64)."""
    return logits.to(torch.promote_types(logits.dtype, torch.float32))


def _forward(model: nn.Module, batch: list[_Seq], n_keep: int, device, pad: int, keep_kw: bool) -> torch.Tensor:
    """Logits ``[B, n_keep, V]`` at the last ``n_keep`` positions of the left-padded batch."""
    ids, mask, position_ids = left_pad([s.fed for s in batch], pad)
    kwargs = {"logits_to_keep": n_keep} if keep_kw else {}
    out = model(
        input_ids=ids.to(device),
        attention_mask=mask.to(device),
        position_ids=position_ids.to(device),
        use_cache=False,
        **kwargs,
    )
    return out.logits[:, -n_keep:, :]


def cloze_record(item: Any, opt: list[float]) -> ItemRecord:
    """The record of a cloze item from its options' summed log-likelihoods (``acc`` and length-normalised
    ``acc_norm`` predictions; alignment is filled by the caller)."""
    pred = int(np.argmax(opt))
    lengths = np.array([float(len(c)) for c in item.choices])
    pred_norm = int(np.argmax(np.asarray(opt) / lengths))
    return ItemRecord(
        id=str(item.id), group=str(item.group), answer_idx=int(item.answer_idx), pred=pred,
        correct=pred == item.answer_idx, option_scores=opt, pred_norm=pred_norm,
        correct_norm=pred_norm == item.answer_idx,
    )


# ------------------------------------------------------------------------------------------------ API
def checked_inputs(items, encodings, batch_size: int) -> tuple[list, list]:
    """``(items, encodings)`` as lists, after checking the batch size and that they pair up and are not empty."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    items, encodings = list(items), list(encodings)
    if len(items) != len(encodings):
        raise ValueError(f"{len(items)} items but {len(encodings)} encodings")
    if not items:
        raise ValueError("no items to evaluate")
    return items, encodings


def evaluate_encoded(
    model: nn.Module,
    items: Sequence[Any],
    encodings: Sequence[Any],
    *,
    format: str = "letter",
    batch_size: int = 16,
    restrict_to_choices: bool = False,
    control: str | None = None,
    progress: bool = True,
) -> EvalResult:
    """Evaluate already-encoded items (see ``evaluate``; ``encodings[i]`` is item i's ``ChoiceEncoding``).

    Args:
        model: a Hugging Face causal LM (or any module taking ``input_ids, attention_mask, position_ids,
            use_cache`` and returning ``.logits [B, T, V]``).
        items: ``MCItem``-like objects (``id, group, choices, answer_idx`` and optionally ``values``).
        encodings: objects with ``prompt_ids``, ``choice_ids`` (cloze) and ``letter_ids`` (letter format).
    """
    if format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
    if format == "cloze" and restrict_to_choices:
        raise ValueError("restrict_to_choices applies to the letter format only (cloze always ranks the options)")
    items, encodings = checked_inputs(items, encodings, batch_size)
    seqs, letters = choice_sequences(items, encodings, format, vocab_size(model))

    device = model.get_input_embeddings().weight.device
    keep_kw = takes_logits_to_keep(model)
    pad = pad_id(model)
    # per item: letter -> (scores [K], predicted token, pred); cloze -> scores [K]
    scores: list[list[float]] = [[math.nan] * len(it.choices) for it in items]
    tokens: list[int | None] = [None] * len(items)
    bar = progress_bar(total=len(seqs), desc=f"evaluating ({format})", unit="seq", disable=not progress,
                       dynamic_ncols=True)
    was_training = model.training
    try:
        model.eval()
        with torch.inference_mode():
            for batch in _batches(seqs, batch_size):
                if format == "letter":
                    logits = upcast_logits(_forward(model, batch, 1, device, pad, keep_kw)[:, -1, :])  # [B, V]
                    width = max(len(letters[s.item]) for s in batch)
                    idx = torch.zeros((len(batch), width), dtype=torch.int64)
                    valid = torch.zeros((len(batch), width), dtype=torch.bool)
                    for row, s in enumerate(batch):
                        k = len(letters[s.item])
                        idx[row, :k] = torch.tensor(letters[s.item])
                        valid[row, :k] = True
                    idx, valid = idx.to(logits.device), valid.to(logits.device)
                    letter_logits = logits.gather(1, idx)  # [B, K]
                    letter_lp = (letter_logits - logits.logsumexp(-1, keepdim=True)).double().cpu()
                    if restrict_to_choices:
                        masked = letter_logits.masked_fill(~valid, -math.inf)
                        best = idx.gather(1, masked.argmax(-1, keepdim=True)).squeeze(1)
                    else:
                        best = logits.argmax(-1)
                    best = best.cpu().tolist()
                    for row, s in enumerate(batch):
                        scores[s.item] = letter_lp[row, : len(letters[s.item])].tolist()
                        tokens[s.item] = int(best[row])
                else:
                    n_keep = max(len(s.targets) for s in batch)
                    logits = upcast_logits(_forward(model, batch, n_keep, device, pad, keep_kw))  # [B, n_keep, V]
                    targets = torch.zeros((len(batch), n_keep), dtype=torch.int64)
                    valid = torch.zeros((len(batch), n_keep), dtype=torch.bool)
                    for row, s in enumerate(batch):  # right-aligned: the last positions predict the option
                        targets[row, n_keep - len(s.targets) :] = torch.tensor(s.targets)
                        valid[row, n_keep - len(s.targets) :] = True
                    targets, valid = targets.to(logits.device), valid.to(logits.device)
                    picked = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - logits.logsumexp(-1)
                    # where(), not a product: a padded slot's log-prob may be -inf, and -inf * 0 is nan
                    sums = torch.where(valid, picked.double(), 0.0).sum(1).cpu().tolist()
                    for row, s in enumerate(batch):
                        scores[s.item][s.option] = sums[row]
                bar.update(len(batch))
    finally:
        model.train(was_training)
        bar.close()

    records = []
    for pos, item in enumerate(items):
        where = f"item {item.id!r} (position {pos})"
        opt = scores[pos]
        if format == "letter":
            token = tokens[pos]
            pred = letters[pos].index(token) if token in letters[pos] else None
            record = ItemRecord(
                id=str(item.id), group=str(item.group), answer_idx=int(item.answer_idx), pred=pred,
                correct=token == letters[pos][item.answer_idx], option_scores=opt, predicted_token=token,
            )
        else:
            record = cloze_record(item, opt)
        record.alignment = item_alignment(item, record.pred, where)
        records.append(record)
    config = getattr(model, "config", None)
    metadata = {"model": str(getattr(config, "_name_or_path", "") or type(model).__name__)}
    return EvalResult(records, format, restrict_to_choices, control, metadata)


def evaluate(
    model: nn.Module,
    tokenizer: Any,
    items: Iterable[Any],
    *,
    format: str = "letter",
    batch_size: int = 16,
    restrict_to_choices: bool = False,
    control: str | None = None,
    progress: bool = True,
) -> EvalResult:
    """Evaluate a model on multiple-choice items.

    Args:
        model: a Hugging Face causal LM on any device(s); inhibition hooks (``culnig_ext.intervention.inhibit``) apply.
        tokenizer: the model's tokenizer (used by ``data.prompts.encode_choices``).
        items: ``MCItem`` objects.
        format: ``"letter"`` (argmax of the next token) or ``"cloze"`` (option log-likelihoods).
        batch_size: sequences per forward pass (cloze runs one sequence per option).
        restrict_to_choices: letter format: argmax over the option letters instead of the full vocabulary.
        control: passed to ``encode_choices`` (``None``, ``"empty"``, ``"frame"``).
        progress: show a tqdm bar.

    Returns:
        ``EvalResult`` with per-item records, ``accuracy``, ``per_group``, ``acc_norm`` (cloze) and
        ``alignment`` (items with ``values``).
    """
    items = list(items)
    encodings = [encode_choices(item, tokenizer, format=format, control=control) for item in items]
    return evaluate_encoded(
        model, items, encodings, format=format, batch_size=batch_size, restrict_to_choices=restrict_to_choices,
        control=control, progress=progress,
    )
