"""The cached-prompt cloze evaluator against an unbatched float64 reference (one forward per option)."""
from __future__ import annotations

import pytest
import torch

from culnig_ext.intervention.cloze_cache import evaluate_cloze_cached
from culnig_ext.intervention.inhibit import inhibit
from tests.intervention.test_evaluate import _random_mc, _reference_scores
from tests.fixtures import ARCHS, tiny_model


@pytest.mark.parametrize("arch", ARCHS)
def test_cached_cloze_matches_unbatched_reference(arch):
    model = tiny_model(arch)
    items, encs = _random_mc(9, seed=2)
    for bs in (1, 4, 32):
        res = evaluate_cloze_cached(model, items, encs, batch_size=bs, progress=False)
        for item, enc, rec in zip(items, encs, res.records):
            expected, _ = _reference_scores(model, item, enc, "cloze")
            assert rec.option_scores == pytest.approx(expected, abs=1e-9)
            assert rec.pred == max(range(4), key=lambda k: expected[k])
            lengths = [len(c) for c in item.choices]
            assert rec.pred_norm == max(range(4), key=lambda k: expected[k] / lengths[k])
            assert rec.correct == (rec.pred == item.answer_idx)


def test_cached_cloze_under_inhibition_matches_reference():
    model = tiny_model("llama")
    items, encs = _random_mc(6, seed=3)
    site = "layers.0.mlp.gate_proj"
    neurons = {site: [0, 3, 5]}
    with inhibit(model, neurons):
        res = evaluate_cloze_cached(model, items, encs, batch_size=3, progress=False)
        expected = [_reference_scores(model, it, enc, "cloze")[0] for it, enc in zip(items, encs)]
    plain = [_reference_scores(model, it, enc, "cloze")[0] for it, enc in zip(items, encs)]
    for rec, want, base in zip(res.records, expected, plain):
        assert rec.option_scores == pytest.approx(want, abs=1e-9)
    assert any(abs(a - b) > 1e-6 for w, p in zip(expected, plain) for a, b in zip(w, p))  # inhibition mattered


def test_cached_cloze_rejects_bad_input():
    model = tiny_model("llama")
    items, encs = _random_mc(2, seed=0)
    with pytest.raises(ValueError, match="2 items but 1 encodings"):
        evaluate_cloze_cached(model, items, encs[:1], progress=False)
    bad = [items[0], type(items[1])(items[1].id, items[1].group, items[1].choices, 9)]
    with pytest.raises(ValueError, match=r"item 'r1' .*answer_idx 9"):
        evaluate_cloze_cached(model, bad, encs, progress=False)
