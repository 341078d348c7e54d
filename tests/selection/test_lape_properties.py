"""Property tests (hypothesis) of LAPE's selection (``culnig_ext.selection.lape.select``) against its formulas
written here in plain Python (``math.log``, ``sorted``): activation probability = active tokens / tokens, entropy
of the probabilities normalised over groups (0 log 0 = 0), the ``filter_rate`` and ``activation_bar_ratio``
quantiles as ``sorted(all probabilities)[round(len * ratio) - 1]``, the ``top_rate`` share of lowest entropy.

Equal entropies at the ``top_rate`` cut may be kept either way (the order of ties there is not part of the rule),
and so may entropies within 1e-9 of the cut (summation order): a neuron below the cut must be kept, one above it
must not; how many of those at the cut are kept is checked where it can be counted."""
from __future__ import annotations

import math

import torch
from hypothesis import given, settings, strategies as st

from culnig_ext.scoring.table import ScoreTable
from culnig_ext.selection import lape

SETTINGS = settings(max_examples=100, deadline=None, derandomize=True)


@st.composite
def activation_tables(draw):
    groups = ["g0", "g1", "g2", "g3"][: draw(st.integers(2, 4))]
    tokens = [draw(st.integers(1, 6)) for _ in groups]
    widths = {f"layers.{layer}.mlp.gate_proj": draw(st.integers(1, 8)) for layer in range(draw(st.integers(1, 2)))}
    widths["layers.0.self_attn.q_proj"] = draw(st.integers(1, 4))  # not ranked: LAPE is on MLP neurons
    active = {s: [[draw(st.integers(0, tokens[g])) for _ in range(w)] for g in range(len(groups))]
              for s, w in widths.items()}
    table = ScoreTable(groups, [1] * len(groups), {s: torch.tensor(a, dtype=torch.float64) for s, a in active.items()},
                       tokens, {"model": "m", "method": lape.METHOD})
    return groups, tokens, active, table


def kth(values, ratio):
    k = min(max(1, round(len(values) * ratio)), len(values))
    return sorted(values)[k - 1]


rates = st.one_of(st.sampled_from([0.05, 0.1, 0.25, 0.5, 0.9, 1.0]), st.floats(0.01, 1.0))


@SETTINGS
@given(activation_tables(), rates, rates, rates)
def test_select_matches_the_formulas(case, top_rate, filter_rate, bar_ratio):
    groups, tokens, active, table = case
    got = lape.select(table, top_rate=top_rate, filter_rate=filter_rate, activation_bar_ratio=bar_ratio)
    assert list(got) == groups
    neurons = [(s, i) for s in sorted(k for k in active if ".mlp." in k) for i in range(len(active[s][0]))]
    prob = {(s, i): [active[s][g][i] / tokens[g] for g in range(len(groups))] for s, i in neurons}
    flat = [p for key in neurons for p in prob[key]]
    top_prob, bar = kth(flat, filter_rate), kth(flat, bar_ratio)
    entropy = {}
    for key in neurons:
        total = sum(prob[key])
        normed = [p / total if total else 0.0 for p in prob[key]]
        h = -sum(q * math.log(q) for q in normed if q > 0)
        entropy[key] = h if any(p > top_prob for p in prob[key]) else math.inf
    n_keep = round(len(neurons) * top_rate)
    cut = sorted(entropy.values())[n_keep - 1] if n_keep else -math.inf
    kept_anywhere = set()
    for g, group in enumerate(groups):
        chosen = {(n.site, n.index): n.score for n in got[group]}
        assert got[group].params["top_prob"] == top_prob and got[group].params["activation_bar"] == bar
        kept_anywhere |= set(chosen)
        for key in neurons:
            eligible = math.isfinite(entropy[key]) and prob[key][g] > bar
            if eligible and entropy[key] < cut - 1e-9:
                assert key in chosen, (group, key)
            if not eligible or entropy[key] > cut + 1e-9:
                assert key not in chosen, (group, key)
            if key in chosen:
                assert chosen[key] == prob[key][g]
        assert all(".mlp." in site for site, _ in chosen)
    assert len(kept_anywhere) <= n_keep
    # How many are kept: all below the cut and n_keep minus those of the ones at it; countable when every neuron
    # at the cut is seen (has some group's probability above the bar).
    seen = {key for key in neurons if any(p > bar for p in prob[key])}
    below = {key for key in neurons if entropy[key] < cut - 1e-9}
    at = {key for key in neurons if abs(entropy[key] - cut) <= 1e-9}
    if n_keep and math.isfinite(cut) and at <= seen:
        assert len(kept_anywhere) == len(below & seen) + n_keep - len(below)
