"""``--format auto``: does the model answer letter-format items above chance? A sequential test on a small sample.

The items (a seeded shuffle of the scoring items) are evaluated in the letter format a few at a time and Wald's
sequential probability ratio test (SPRT) runs over their 0/1 outcomes in order. For item ``i`` with ``n_i``
options, chance is ``p0_i = 1 / n_i`` and the alternative ``p1_i = min(p0_i + lift, 0.99)`` (``lift`` = 0.2: a
model that is worth asking for letters); the log-likelihood ratio adds ``log(p1_i / p0_i)`` for a right answer and
``log((1 - p1_i) / (1 - p0_i))`` for a wrong one. The test stops at the first item where the sum reaches
``log((1 - beta) / alpha)`` (above chance: letter) or ``log(beta / (1 - alpha))`` (at chance: cloze), alpha =
beta = 0.05. A model at chance on 4 options stops after about 36 items, one that is always right after 6. Without
a decision after ``max_items`` items (64), the exact one-sided binomial test of the items seen decides at 0.05, as
a fixed-sample test would.

Everything it saw is in ``FormatProbe`` (``to_dict`` for the report and the run's config.json).
"""
from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

from scipy.stats import binomtest

from culnig_ext.data import TokenizerError, encode_choices
from culnig_ext.data.schema import MCItem
from culnig_ext.intervention.evaluate import evaluate_encoded

LIFT = 0.2
ALPHA = 0.05
BETA = 0.05
MAX_ITEMS = 64
STEP = 8  # items evaluated between two looks at the test (one batch)


@dataclass
class Sequential:
    """Where the SPRT stands after some items: ``decision`` is ``"letter"``, ``"cloze"`` or None (not yet)."""

    items: int
    hits: int
    chance: float  # mean of 1/n_choices over the items seen
    llr: float
    decision: str | None


def bounds(alpha: float = ALPHA, beta: float = BETA) -> tuple[float, float]:
    """The SPRT's ``(lower, upper)`` bounds on the log-likelihood ratio."""
    return math.log(beta / (1 - alpha)), math.log((1 - beta) / alpha)


def sprt(outcomes: Sequence[bool], n_choices: Sequence[int], *, lift: float = LIFT, alpha: float = ALPHA,
         beta: float = BETA) -> Sequential:
    """The SPRT over ``outcomes`` in order, stopped at the first item whose log-likelihood ratio crosses a bound
    (module docstring); ``items`` counts the items up to and including that one."""
    if len(outcomes) != len(n_choices):
        raise ValueError(f"sprt: {len(outcomes)} outcomes but {len(n_choices)} option counts")
    low, high = bounds(alpha, beta)
    llr, hits, chance_sum = 0.0, 0, 0.0
    for i, (right, n) in enumerate(zip(outcomes, n_choices)):
        if n < 2:
            raise ValueError(f"sprt: item {i} has {n} option(s); chance needs at least 2")
        p0 = 1.0 / n
        p1 = min(p0 + lift, 0.99)
        hits += bool(right)
        chance_sum += p0
        llr += math.log(p1 / p0) if right else math.log((1 - p1) / (1 - p0))
        if llr >= high or llr <= low:
            return Sequential(i + 1, hits, chance_sum / (i + 1), llr, "letter" if llr >= high else "cloze")
    n = len(outcomes)
    return Sequential(n, hits, chance_sum / n if n else 0.0, llr, None)


@dataclass
class FormatProbe:
    """What ``--format auto`` saw and chose.

    Attributes:
        format: the chosen format.
        items, hits, chance: items evaluated in the letter format, right answers, mean chance level.
        llr, lower, upper: the SPRT's log-likelihood ratio where it stopped, and its bounds.
        stopped: ``above chance`` / ``at chance`` (the SPRT decided), ``at the cap`` (the binomial test decided
            after ``max_items``), or ``tokenizer`` (the letter format cannot be encoded; nothing evaluated).
        p_value: the one-sided binomial p-value of the items seen (the decision at the cap; for the record else).
        max_items, lift, alpha, beta: the test's settings.
        reason: one sentence saying all of it.
        ids: the items evaluated, in the order the test saw them.
    """

    format: str
    items: int
    hits: int
    chance: float
    llr: float
    lower: float
    upper: float
    stopped: str
    p_value: float | None
    max_items: int
    lift: float
    alpha: float
    beta: float
    reason: str
    ids: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def probe_format(model, tokenizer, items: Sequence[MCItem], *, batch_size: int = STEP, max_items: int = MAX_ITEMS,
                 seed: int = 0, progress: bool = False, lift: float = LIFT, alpha: float = ALPHA,
                 beta: float = BETA) -> FormatProbe:
    """Choose ``letter`` or ``cloze`` for ``model`` by the sequential test on at most ``max_items`` of ``items``
    (a seeded shuffle), evaluated ``batch_size`` at a time (module docstring)."""
    if not items:
        raise ValueError("probe_format: no items to decide the format on")
    low, high = bounds(alpha, beta)
    order = list(items)
    random.Random(seed).shuffle(order)
    order = order[:max_items]
    settings = dict(max_items=max_items, lift=lift, alpha=alpha, beta=beta, lower=low, upper=high)
    try:
        encodings = [encode_choices(it, tokenizer, format="letter") for it in order]
    except TokenizerError as exc:
        reason = f"the tokenizer cannot encode the letter format ({exc}): using the cloze format"
        return FormatProbe("cloze", 0, 0, 0.0, 0.0, stopped="tokenizer", p_value=None, reason=reason, **settings)
    outcomes: list[bool] = []
    state = sprt([], [])
    step = max(1, min(batch_size, STEP))
    for start in range(0, len(order), step):
        chunk = slice(start, start + step)
        res = evaluate_encoded(model, order[chunk], encodings[chunk], format="letter", batch_size=step,
                               progress=progress)
        outcomes += [bool(x) for x in res.correct]
        state = sprt(outcomes, [len(it.choices) for it in order[: len(outcomes)]], lift=lift, alpha=alpha,
                     beta=beta)
        if state.decision is not None:
            break
    p = binomtest(state.hits, state.items, state.chance, alternative="greater").pvalue
    if state.decision is not None:
        fmt, stopped = state.decision, "above chance" if state.decision == "letter" else "at chance"
        test = (f"sequential test (SPRT, chance vs chance + {lift:g}, alpha = beta = {alpha:g}) stopped after "
                f"{state.items} items, log-likelihood ratio {state.llr:.2f} "
                f"{'>=' if fmt == 'letter' else '<='} {high if fmt == 'letter' else low:.2f}")
    else:
        fmt, stopped = ("letter" if p < alpha else "cloze"), "at the cap"
        test = (f"sequential test undecided after {state.items} items (log-likelihood ratio {state.llr:.2f}, bounds "
                f"{low:.2f} / {high:.2f}); binomial p = {p:.3g}")
    reason = (f"letter-format accuracy {state.hits}/{state.items} = {state.hits / state.items:.1%} vs chance "
              f"{state.chance:.1%}; {test}: using the {fmt} format")
    return FormatProbe(fmt, state.items, state.hits, state.chance, state.llr, stopped=stopped, p_value=float(p),
                       reason=reason, ids=[it.id for it in order[: state.items]], **settings)
