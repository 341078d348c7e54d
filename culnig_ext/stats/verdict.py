"""Is the inhibited set culture-specific? Relative drops on cultural and non-cultural sets, with intervals, and a
one-line verdict by fixed rules.

For each evaluation set ``s`` (items ``i``, per-item 0/1 outcomes) the **relative excess drop** is

    D_s = (mean_i random_i - mean_i ours_i) / mean_i original_i

where ``random_i`` is item i's outcome averaged over the random neuron sets: the accuracy lost to our neurons beyond
what random neurons of the same size lose, as a share of the original accuracy. ``D_cult`` is the mean of ``D_s``
over the cultural sets, ``D_non`` over the non-cultural sets; ``ratio = D_non / D_cult`` and the specificity gap
``gap = D_cult - D_non``. Intervals are 95% percentile intervals of a bootstrap that resamples the items of every
set independently (each item keeps its original/ours/random outcomes together) and recomputes all of them.

Rules (each "> 0" below is a lower interval bound above 0, i.e. a one-sided test at 2.5%):

1. ``inconclusive`` when no non-cultural set was evaluated.
2. ``culture-specific`` when ``D_cult > 0`` and ``gap > 0``: our neurons lower the cultural sets beyond random
   neurons, and significantly more (relatively) than the non-cultural sets.
3. ``not specific`` when ``D_non > 0`` and not ``gap > 0``: the non-cultural set also drops beyond random, not
   significantly less than the cultural sets.
4. ``inconclusive`` otherwise: no significant excess drop on the cultural sets and none on the non-cultural set,
   a cultural drop whose difference from the non-cultural one the sets are too small to establish, or a gap and a
   non-cultural drop that are both significant beside a cultural drop that is not (the non-cultural set drops
   significantly less, so it is not rule 3; the cultural sets do not drop beyond random, so it is not rule 2).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from culnig_ext.stats.bootstrap import per_item_values

CULTURE_SPECIFIC = "culture-specific"
NOT_SPECIFIC = "not specific"
INCONCLUSIVE = "inconclusive"
LABELS = (CULTURE_SPECIFIC, NOT_SPECIFIC, INCONCLUSIVE)


@dataclass(frozen=True)
class Interval:
    """A point estimate and its percentile bootstrap interval."""

    value: float
    low: float
    high: float

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


@dataclass(frozen=True)
class SetOutcome:
    """Per-item outcomes of one evaluation set: ``original``, ``ours`` ``[I]``, ``randoms`` ``[R, I]`` (0/1)."""

    name: str
    cultural: bool
    original: Any
    ours: Any
    randoms: Any


@dataclass
class Verdict:
    """The specificity verdict (see the module docstring). ``per_set``: ``{set name: D_s interval}``."""

    label: str
    reason: str
    cultural: Interval
    non_cultural: Interval | None
    ratio: Interval | None
    gap: Interval | None
    per_set: dict[str, Interval] = field(default_factory=dict)
    confidence_level: float = 0.95
    n_resamples: int = 10000

    @property
    def line(self) -> str:
        """The one-line verdict."""
        return f"**{self.label}**: {self.reason}"

    def to_dict(self) -> dict[str, Any]:
        def iv(x: Interval | None):
            return None if x is None else x.to_dict()

        return {"label": self.label, "reason": self.reason, "cultural": iv(self.cultural),
                "non_cultural": iv(self.non_cultural), "ratio": iv(self.ratio), "gap": iv(self.gap),
                "per_set": {k: iv(v) for k, v in self.per_set.items()},
                "confidence_level": self.confidence_level, "n_resamples": self.n_resamples}

    @classmethod
    def from_dict(cls, obj: Mapping[str, Any], *, where: str = "verdict") -> "Verdict":
        def iv(x, name):
            if x is None:
                return None
            try:
                return Interval(float(x["value"]), float(x["low"]), float(x["high"]))
            except (KeyError, TypeError, ValueError) as exc:
                raise ValueError(f"{where}.{name}: expected {{value, low, high}}, got {x!r}") from None

        if not isinstance(obj, Mapping) or obj.get("label") not in LABELS:
            raise ValueError(f"{where}.label: expected one of {LABELS}, got {obj.get('label') if isinstance(obj, Mapping) else obj!r}")
        return cls(label=obj["label"], reason=str(obj.get("reason", "")), cultural=iv(obj.get("cultural"), "cultural"),
                   non_cultural=iv(obj.get("non_cultural"), "non_cultural"), ratio=iv(obj.get("ratio"), "ratio"),
                   gap=iv(obj.get("gap"), "gap"),
                   per_set={str(k): iv(v, f"per_set.{k}") for k, v in dict(obj.get("per_set", {})).items()},
                   confidence_level=float(obj.get("confidence_level", 0.95)),
                   n_resamples=int(obj.get("n_resamples", 10000)))


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _fmt(x: Interval) -> str:
    return f"{_pct(x.value)} [{_pct(x.low)}, {_pct(x.high)}]"


def decide(cultural: Interval | None, non_cultural: Interval | None, gap: Interval | None) -> tuple[str, str]:
    """The rules of the module docstring: ``(label, reason)`` from the intervals."""
    if cultural is None:
        return INCONCLUSIVE, "the cultural relative drop is undefined (too few resamples with accuracy above 0)"
    if non_cultural is None or gap is None:
        return INCONCLUSIVE, "no non-cultural set was evaluated, so specificity cannot be judged"
    cult_drop, non_drop, gap_pos = cultural.low > 0, non_cultural.low > 0, gap.low > 0
    what = (f"relative excess drop vs random neurons {_fmt(cultural)} on the cultural sets, {_fmt(non_cultural)} on "
            f"the non-cultural set(s)")
    if cult_drop and gap_pos:
        return CULTURE_SPECIFIC, f"{what}; the cultural drop is significantly larger"
    if non_drop and not gap_pos:  # rule 3 as documented: an established gap is never "not significantly less"
        return NOT_SPECIFIC, f"{what}; the non-cultural set drops beyond random too, not significantly less"
    if not cult_drop:
        return INCONCLUSIVE, f"{what}; the cultural sets do not drop significantly more than with random neurons"
    return INCONCLUSIVE, f"{what}; the cultural drop cannot be told apart from the non-cultural one"


def specificity(
    sets: Sequence[SetOutcome], *, n_resamples: int = 10000, confidence_level: float = 0.95, seed: int = 0
) -> Verdict:
    """Relative excess drops, their ratio and gap with bootstrap intervals, and the verdict (module docstring).

    Raises:
        ValueError: no cultural set, a set whose random outcomes are missing, a set with original accuracy 0,
            or outcome arrays of different lengths (naming the set).
    """
    if not 0 < confidence_level < 1:
        raise ValueError(f"confidence_level must be in (0, 1), got {confidence_level}")
    if not any(s.cultural for s in sets):
        raise ValueError("specificity needs at least one cultural evaluation set")
    rng = np.random.default_rng(seed)
    tail = (1 - confidence_level) / 2
    point: dict[str, float] = {}
    boot: dict[str, np.ndarray] = {}
    for s in sets:
        orig = per_item_values(s.original, f"{s.name}: original")
        ours = per_item_values(s.ours, f"{s.name}: ours")
        rand = np.asarray(s.randoms, dtype=np.float64)
        if rand.ndim != 2 or rand.shape[0] == 0:
            raise ValueError(f"{s.name}: randoms must be [R >= 1, items], got shape {rand.shape}")
        rand = per_item_values(rand, f"{s.name}: randoms")
        if not orig.shape == ours.shape == rand.shape:
            raise ValueError(f"{s.name}: original, ours and randoms cover {orig.size}, {ours.size}, {rand.size} items")
        if orig.mean() <= 0:
            raise ValueError(f"{s.name}: original accuracy is 0, so a relative drop is undefined")
        point[s.name] = float((rand.mean() - ours.mean()) / orig.mean())
        idx = rng.integers(0, orig.size, size=(n_resamples, orig.size))
        with np.errstate(divide="ignore", invalid="ignore"):
            boot[s.name] = (rand[idx].mean(1) - ours[idx].mean(1)) / orig[idx].mean(1)

    def interval(value: float, draws: np.ndarray) -> Interval | None:
        """None when the value or its interval is undefined (a ratio over a zero cultural drop)."""
        draws = draws[np.isfinite(draws)]
        if not np.isfinite(value) or draws.size < 0.5 * n_resamples:
            return None
        low, high = np.quantile(draws, [tail, 1 - tail])
        return Interval(float(value), float(low), float(high))

    def pooled(cultural: bool):
        names = [s.name for s in sets if s.cultural == cultural]
        if not names:
            return None, None
        return float(np.mean([point[n] for n in names])), np.mean([boot[n] for n in names], axis=0)

    c_val, c_boot = pooled(True)
    n_val, n_boot = pooled(False)
    cultural = interval(c_val, c_boot)
    non = ratio = gap = None
    if n_val is not None:
        non = interval(n_val, n_boot)
        gap = interval(c_val - n_val, c_boot - n_boot)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = interval(n_val / c_val if c_val != 0 else float("nan"), n_boot / c_boot)
    label, reason = decide(cultural, non, gap)
    return Verdict(label, reason, cultural, non, ratio, gap, {n: interval(point[n], boot[n]) for n in point},
                   confidence_level, n_resamples)


def from_results(
    results: Mapping[str, Mapping[str, Any]], cultural: Mapping[str, bool], *, inhibited: str, seed: int = 0,
    n_resamples: int = 10000,
) -> Verdict | None:
    """The verdict from ``{set: {condition: EvalResult}}`` as ``pipeline.evaluate_conditions`` returns it: the
    ``inhibited`` condition against ``original`` and every ``random*`` condition. Sets with original accuracy 0
    (no relative drop) are left out. None when no set is left with random conditions or none of them is
    cultural."""
    outcomes = []
    for name, by_cond in results.items():
        randoms = [res.correct for cond, res in by_cond.items() if cond.startswith("random")]
        if randoms and inhibited in by_cond and by_cond["original"].correct.any():
            outcomes.append(SetOutcome(name, bool(cultural[name]), by_cond["original"].correct,
                                       by_cond[inhibited].correct, randoms))
    if not outcomes or not any(o.cultural for o in outcomes):
        return None
    return specificity(outcomes, seed=seed, n_resamples=n_resamples)
