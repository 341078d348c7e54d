"""``select.remove_surface``: a recipe's second and later surface sets, written out by hand on a ramp: per kind for
general neurons (a kind left out keeps its neurons), pooled over kinds for one group's specific neurons, and equal
to removing the union of the two surface sets' tops."""
from __future__ import annotations

import torch
import pytest

from culnig_ext.selection.culnig import general, remove_surface, specific
from culnig_ext.scoring.table import ScoreTable

GATE, Q = "layers.0.mlp.gate_proj", "layers.0.self_attn.q_proj"
RAMP = torch.arange(9.0, -1.0, -1.0, dtype=torch.float64)[None]  # scores 9..0: the top 4 of a kind is 0..3


def spike(positions_gate, positions_q, groups=("B",)) -> ScoreTable:
    """A table whose only non-zero scores are at the given positions (descending values, so the order is fixed)."""
    sums = {}
    for site, positions in ((GATE, positions_gate), (Q, positions_q)):
        t = torch.zeros(len(groups), 10, dtype=torch.float64)
        for rank, p in enumerate(positions):
            t[0, p] = 10.0 - rank
        sums[site] = t
    return ScoreTable(list(groups), [4] * len(groups), sums)


def test_general_per_kind_by_hand():
    neur = ScoreTable(["A"], [1], {GATE: RAMP, Q: RAMP})
    first = general(neur, None, None, t_mlp=0.4, t_attn=0.4, r_mlp=0.0, r_attn=0.0)
    assert first.pairs == [(GATE, 0), (GATE, 1), (GATE, 2), (GATE, 3), (Q, 0), (Q, 1), (Q, 2), (Q, 3)]
    second = spike([1, 7], [3, 8])  # its top 2 of each kind: gate 1, 7 and q 3, 8
    got = remove_surface(first, second, {"mlp": 0.2, "attn": 0.2}, role="shuffled")
    assert got.pairs == [(GATE, 0), (GATE, 2), (GATE, 3), (Q, 0), (Q, 1), (Q, 2)]
    assert [n.score for n in got] == [9.0, 7.0, 6.0, 9.0, 8.0, 7.0]
    assert got.params["surfaces"] == ["shuffled"] and got.sources["shuffled"] == second.fingerprint()
    only_mlp = remove_surface(first, second, {"mlp": 0.2}, role="shuffled")  # attention neurons kept
    assert only_mlp.pairs == [(GATE, 0), (GATE, 2), (GATE, 3), (Q, 0), (Q, 1), (Q, 2), (Q, 3)]


def test_two_surfaces_remove_the_union_of_their_tops():
    neur = ScoreTable(["A"], [1], {GATE: RAMP, Q: RAMP})
    a, b = spike([0, 9], [1, 9]), spike([2, 8], [9, 3])
    both = remove_surface(general(neur, None, a, 0.4, 0.4, 0.2, 0.2), b, {"mlp": 0.2, "attn": 0.2})
    # by hand: top 4 of each kind {0,1,2,3}; a removes gate 0, q 1; b removes gate 2, q 3
    assert both.pairs == [(GATE, 1), (GATE, 3), (Q, 0), (Q, 2)]


def test_specific_pooled_by_hand():
    groups = ["A", "B"]
    up = torch.tensor([[9.0, 8, 7, 6, 5, 4, 3, 2, 1, 0], [0.0] * 10], dtype=torch.float64)
    neur = ScoreTable(groups, [1, 1], {GATE: up, Q: up / 2})
    first = specific(neur, None, None, "A", t=0.25, r=0.0, z_min=None)  # floor(20 * 0.25) = 5 neurons, pooled
    # S[A] / N (N = 2 items): gate 4.5, 4, 3.5, 3, 2.5, ... and q half of it (2.25, ...): the top 5 are gates 0-4
    assert first.pairs == [(GATE, 0), (GATE, 1), (GATE, 2), (GATE, 3), (GATE, 4)]
    surface = ScoreTable(groups, [2, 2], {GATE: torch.tensor([[0.0, 0, 0, 5, 0, 0, 0, 0, 0, 0], [0.0] * 10],
                                                             dtype=torch.float64),
                                          Q: torch.tensor([[0.0] * 9 + [6.0], [0.0] * 10], dtype=torch.float64)})
    # pooled top floor(20 * 0.1) = 2 of group A's surface scores: q 9 and gate 3; only gate 3 was selected
    got = remove_surface(first, surface, {"all": 0.1}, normalize="total", group="A")
    assert got.pairs == [(GATE, 0), (GATE, 1), (GATE, 2), (GATE, 4)]


def test_errors():
    neur = ScoreTable(["A"], [1], {GATE: RAMP, Q: RAMP})
    first = general(neur, None, None, 0.4, 0.4, 0.0, 0.0)
    with pytest.raises(ValueError, match="must be a fraction in"):
        remove_surface(first, spike([0], [0]), {"mlp": 1.5})
    with pytest.raises(KeyError):
        remove_surface(first, spike([0], [0]), {"all": 0.1}, group="Z")
