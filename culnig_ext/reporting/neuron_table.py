"""The explorer's neuron table: per neuron its scores on the cultural, control and CountryRC items, the contrast
that ranks culture-general neurons, the per-group contrast and its z-score across groups, and the sets it is in.

Definitions (those of ``selection.culnig``, recomputed here from the run's score tables so that neurons outside the
sets get them too; each table's group sums are divided as the run divided them):

- ``score`` = ``sum_g neur[g] / N_neur``, ``control`` = ``sum_g ctrl[g] / N_ctrl``, ``crc`` = ``sum_g crc[g] / N_crc``
  with ``N`` the table's total item count (``normalize="count"``), its summed P (``"prob"``) or 1 (``"none"``);
- ``contrast`` = ``score - control``: the culture-general ranking score (a run with a general-ability contrast
  table subtracts that too; the general set's own file holds that score);
- ``group_scores[g]`` = ``neur[g] / N_neur - ctrl[g] / N_ctrl`` with the specific selection's divisors (``"total"``:
  the table's whole item count; ``"prob"``: the group's summed P), and ``z[g]`` its z-score across groups
  (population sd; 0 where the groups' scores are equal up to rounding, as ``selection.culnig.specific`` does).

Rows: every neuron in a set, then the ``top_n`` other neurons with the highest contrast, all sorted by contrast,
highest first. Values are rounded to 6 significant digits (the page shows 4).
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch

from culnig_ext.models.sites import parse_site_name
from culnig_ext.scoring.table import ScoreTable
from culnig_ext.selection.neurons import NeuronSet

DIGITS = 6


def rounded(values) -> list[float | None]:
    """Floats rounded to ``DIGITS`` significant digits (None stays None), for a compact page."""
    return [None if v is None else float(f"{v:.{DIGITS}g}") for v in values]


def _divisor(table: ScoreTable, normalize: str) -> float:
    if normalize == "none":
        return 1.0
    total = float(table.normalizer(normalize).sum())
    if not total > 0:
        raise ValueError(f"score table {table.metadata.get('model', '')!r}: total {normalize} normaliser is {total}")
    return total


def _group_divisors(table: ScoreTable, normalize: str) -> torch.Tensor:
    if normalize == "prob":
        return table.prob_sums.to(torch.float64)
    return table.counts.sum().to(torch.float64).expand(len(table.groups)).clone()


def _per_site(neur: ScoreTable, ctrl: ScoreTable | None, crc: ScoreTable | None, normalize: str,
              specific_normalize: str) -> dict[str, np.ndarray]:
    """Flat ``[n]`` float64 arrays over all sites in the neur table's site order, and ``group_scores``/``z`` as
    ``[n, G]``."""
    div = _divisor(neur, normalize)
    ctrl_div = _divisor(ctrl, normalize) if ctrl is not None else None
    crc_div = _divisor(crc, normalize) if crc is not None else None
    g_div = _group_divisors(neur, specific_normalize)
    if ctrl is not None:
        missing = [g for g in neur.groups if g not in ctrl.groups]
        if missing:
            raise KeyError(f"the control table lacks group(s) {missing} of the cultural table")
        rows = [ctrl.group_index(g) for g in neur.groups]
        c_div = _group_divisors(ctrl, specific_normalize)[rows]
    parts: dict[str, list] = {k: [] for k in ("score", "control", "crc", "group_scores", "z")}
    for site in neur.sites:
        s = neur[site].to(torch.float64)
        parts["score"].append((s.sum(0) / div).numpy())
        per_group = s / g_div[:, None]
        if ctrl is not None:
            c = ctrl[site].to(torch.float64)
            parts["control"].append((c.sum(0) / ctrl_div).numpy())
            per_group = per_group - c[rows] / c_div[:, None]
        if crc is not None:
            parts["crc"].append((crc[site].to(torch.float64).sum(0) / crc_div).numpy())
        mean = per_group.mean(0)
        sd = per_group.std(0, correction=0) if per_group.shape[0] > 1 else torch.zeros_like(mean)
        flat = sd <= 4 * per_group.shape[0] * torch.finfo(torch.float64).eps * per_group.abs().amax(0)
        z = torch.where(flat, torch.zeros_like(mean), (per_group - mean) / torch.where(flat, 1.0, sd))
        parts["group_scores"].append(per_group.T.numpy())
        parts["z"].append(z.T.numpy())
    return {k: np.concatenate(v) if v else None for k, v in parts.items()}


def neuron_rows(neur: ScoreTable | None, ctrl: ScoreTable | None, crc: ScoreTable | None,
                general: NeuronSet | None, specific: Mapping[str, NeuronSet], *, top_n: int = 1000,
                normalize: str = "count", specific_normalize: str = "total") -> dict[str, Any]:
    """The neuron table as columns (JSON-ready): ``sites``, ``groups``, and per row ``site`` (an index into
    ``sites``), ``layer``, ``kind``, ``index``, ``score``, ``control``, ``crc``, ``contrast``, ``group_scores``
    (``[G]`` per row), ``z`` (``[G]``), ``general`` (0/1), ``specific`` (indices into ``groups``).

    Without a cultural table (a folder with neuron sets only) the rows are the sets' neurons, ``contrast`` their
    set score (general first) and the other scores None.

    Args:
        neur, ctrl, crc: the run's summed score tables (``RUN/scores``); None where absent.
        general, specific: the run's neuron sets.
        top_n: how many neurons outside the sets to add (highest contrast first); 0: the sets only.
        normalize, specific_normalize: the divisors the run used (general's ``normalize``; ``"total"`` or
            ``"prob"`` for the per-group scores).
    """
    if isinstance(top_n, bool) or not isinstance(top_n, int) or top_n < 0:
        raise ValueError(f"top_n must be a non-negative integer, got {top_n!r}")
    in_general = {(n.site, n.index) for n in general} if general is not None else set()
    in_specific: dict[tuple[str, int], list[str]] = {}
    for group, ns in specific.items():
        for n in ns:
            in_specific.setdefault((n.site, n.index), []).append(group)
    if neur is None:
        return _set_rows(general, specific, in_general, in_specific)
    cols = _per_site(neur, ctrl, crc, normalize, specific_normalize)
    sites = list(neur.sites)
    widths = [int(neur[s].shape[1]) for s in sites]
    site_of = np.repeat(np.arange(len(sites)), widths)
    index_of = np.concatenate([np.arange(w) for w in widths]) if widths else np.zeros(0, dtype=np.int64)
    keys = [(sites[s], int(i)) for s, i in zip(site_of.tolist(), index_of.tolist())]
    contrast = cols["score"] - cols["control"] if cols["control"] is not None else cols["score"]
    selected = np.array([k in in_general or k in in_specific for k in keys], dtype=bool)
    others = np.flatnonzero(~selected)
    others = others[np.argsort(-contrast[others], kind="stable")[:top_n]]
    chosen = np.concatenate([np.flatnonzero(selected), others])
    chosen = chosen[np.argsort(-contrast[chosen], kind="stable")]
    groups = list(neur.groups)
    group_pos = {g: i for i, g in enumerate(groups)}
    out = {
        "sites": sites, "groups": groups, "n_neurons": len(keys), "top_n": top_n,
        "site": site_of[chosen].tolist(), "layer": [parse_site_name(sites[s])[0] for s in site_of[chosen].tolist()],
        "kind": [parse_site_name(sites[s])[1] for s in site_of[chosen].tolist()], "index": index_of[chosen].tolist(),
        "score": rounded(cols["score"][chosen].tolist()), "contrast": rounded(contrast[chosen].tolist()),
        "control": rounded(cols["control"][chosen].tolist()) if cols["control"] is not None else None,
        "crc": rounded(cols["crc"][chosen].tolist()) if cols["crc"] is not None else None,
        "group_scores": [rounded(r) for r in cols["group_scores"][chosen].tolist()],
        "z": [rounded(r) for r in cols["z"][chosen].tolist()],
        "general": [int(keys[i] in in_general) for i in chosen.tolist()],
        "specific": [[group_pos[g] for g in in_specific.get(keys[i], []) if g in group_pos] for i in chosen.tolist()],
    }
    return out


def _set_rows(general: NeuronSet | None, specific: Mapping[str, NeuronSet], in_general, in_specific) -> dict:
    """Rows from the neuron sets alone: their neurons, scored by the set's score."""
    score: dict[tuple[str, int], float] = {}
    for ns in ([general] if general is not None else []) + list(specific.values()):
        for n in ns:
            score.setdefault((n.site, n.index), n.score)
    keys = sorted(score, key=lambda k: -score[k])
    sites = list(dict.fromkeys(k[0] for k in keys))
    groups = list(specific)
    pos = {s: i for i, s in enumerate(sites)}
    none = [None] * len(keys)
    return {
        "sites": sites, "groups": groups, "n_neurons": None, "top_n": 0, "site": [pos[k[0]] for k in keys],
        "layer": [parse_site_name(k[0])[0] for k in keys], "kind": [parse_site_name(k[0])[1] for k in keys],
        "index": [k[1] for k in keys], "score": none, "contrast": rounded(score[k] for k in keys), "control": none,
        "crc": none, "group_scores": None, "z": None, "general": [int(k in in_general) for k in keys],
        "specific": [[groups.index(g) for g in in_specific.get(k, [])] for k in keys],
    }
