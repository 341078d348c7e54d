"""kinship, kinship_matrix (vs weight-ablated unbatched references), layer_counts, positive_share."""
from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from culnig_ext.reporting.analysis import KinshipResult, kinship, kinship_matrix_encoded, layer_counts, positive_share
from culnig_ext.selection.neurons import NeuronSet
from tests.fixtures import VOCAB, tiny_model


def test_kinship_matrix_and_ranks_by_hand():
    drops = {
        "JP": {"JP": 0.30, "KR": 0.10, "US": 0.10},
        "KR": {"KR": 0.20, "US": -0.10, "JP": 0.05},  # key order differs from the columns: must not matter
    }
    res = kinship(drops)
    assert res.targets == ["JP", "KR"] and res.groups == ["JP", "KR", "US"]
    np.testing.assert_array_equal(res.matrix, [[0.30, 0.10, 0.10], [0.05, 0.20, -0.10]])
    assert res.ranks == {"JP": {"JP": 1, "KR": 2, "US": 2}, "KR": {"JP": 2, "KR": 1, "US": 3}}
    assert res.self_rank == {"JP": 1, "KR": 1}
    back = KinshipResult.from_dict(res.to_dict())
    np.testing.assert_array_equal(back.matrix, res.matrix)
    assert back.ranks == res.ranks and back.targets == res.targets


def test_kinship_refuses_incomplete_rows():
    with pytest.raises(ValueError, match=r"target 'KR'.*no drop for group\(s\) \['US'\]"):
        kinship({"JP": {"JP": 0.1, "US": 0.0}, "KR": {"JP": 0.0}})
    with pytest.raises(ValueError, match=r"target 'JP', group 'US'.*not finite"):
        kinship({"JP": {"JP": 0.1, "US": float("nan")}})
    with pytest.raises(ValueError, match="no targets"):
        kinship({})


@dataclass(frozen=True)
class Item:
    id: str
    group: str
    choices: tuple
    answer_idx: int
    values: tuple | None = None


@dataclass(frozen=True)
class Enc:
    prompt_ids: tuple
    choice_ids: list
    letter_ids: tuple | None = None


def _cloze_items(n: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    items, encs = [], []
    for i in range(n):
        prompt = tuple(torch.randint(3, VOCAB, (int(torch.randint(2, 7, (1,), generator=g)),), generator=g).tolist())
        choice_ids = [tuple(torch.randint(3, VOCAB, (2,), generator=g).tolist()) for _ in range(3)]
        items.append(Item(f"q{i}", ("JP", "KR")[i % 2], ("aa", "bbb", "c"), i % 3))
        encs.append(Enc(prompt, choice_ids))
    return items, encs


def _reference_group_acc(model, items, encs) -> dict[str, float]:
    """Per-group cloze accuracy from an unbatched float64 forward per option."""
    hits: dict[str, list[bool]] = {}
    with torch.no_grad():
        for item, enc in zip(items, encs):
            lls = []
            for choice in enc.choice_ids:
                ids = torch.tensor([enc.prompt_ids + choice])
                lp = torch.log_softmax(model(input_ids=ids).logits[0].double(), -1)
                p = len(enc.prompt_ids)
                lls.append(sum(lp[p - 1 + j, t].item() for j, t in enumerate(choice)))
            hits.setdefault(item.group, []).append(int(np.argmax(lls)) == item.answer_idx)
    return {g: sum(h) / len(h) for g, h in hits.items()}


def _ablated(model, neurons: NeuronSet):
    copy_ = copy.deepcopy(model)
    with torch.no_grad():
        for site, idx in neurons.by_site().items():
            _, layer, module, proj = site.split(".")
            getattr(getattr(copy_.model.layers[int(layer)], module), proj).weight[idx] = 0.0
    return copy_


def test_kinship_matrix_equals_weight_ablated_references():
    model = tiny_model("llama", seed=3)
    items, encs = _cloze_items(12, seed=0)
    g = torch.Generator().manual_seed(5)
    sets = {
        "JP": NeuronSet.from_pairs(
            [(f"layers.{l}.mlp.gate_proj", int(i)) for l in (0, 1) for i in torch.randperm(48, generator=g)[:24]]
        ),
        "KR": NeuronSet.from_pairs(
            [(f"layers.{l}.self_attn.v_proj", int(i)) for l in (0, 1) for i in torch.randperm(16, generator=g)[:8]]
        ),
    }
    run = kinship_matrix_encoded(model, items, encs, sets, format="cloze", batch_size=5)
    base = _reference_group_acc(model, items, encs)
    assert run.baseline.per_group == pytest.approx(base)
    expected = np.array(
        [[base[c] - _reference_group_acc(_ablated(model, sets[t]), items, encs)[c] for c in ("JP", "KR")]
         for t in ("JP", "KR")]
    )
    assert run.result.targets == ["JP", "KR"] and run.result.groups == ["JP", "KR"]
    np.testing.assert_allclose(run.result.matrix, expected, atol=1e-12)
    assert np.abs(expected).max() > 0  # the inhibition changed something
    assert all(len(m._forward_hooks) == 0 for m in model.modules())
    assert set(run.inhibited) == {"JP", "KR"}


def test_layer_counts_by_hand():
    neurons = NeuronSet.from_pairs(
        [
            ("layers.0.mlp.gate_proj", 1),
            ("layers.0.mlp.gate_proj", 7),
            ("layers.2.mlp.gate_proj", 3),
            ("layers.0.self_attn.q_proj", 4),
            ("layers.2.self_attn.k_proj", 0),
            ("layers.2.self_attn.v_proj", 0),
            ("layers.3.self_attn.v_proj", 9),
        ]
    )
    expected = {"mlp": [2, 0, 1, 0], "attn": [1, 0, 2, 1]}
    assert layer_counts(neurons, 4) == expected
    assert layer_counts({s: idx.tolist() for s, idx in neurons.by_site().items()}, 4) == expected
    assert layer_counts(neurons.pairs, 4) == expected
    assert layer_counts({}, 2) == {"mlp": [0, 0], "attn": [0, 0]}
    with pytest.raises(ValueError, match=r"layers\.3\.self_attn\.v_proj.*layer 3 outside \[0, 3\)"):
        layer_counts(neurons, 3)


def test_positive_share_by_hand():
    scores = torch.tensor([[1.0, -1.0, 0.0], [2.0, 0.5, 0.0], [-3.0, 0.1, 0.0], [0.2, -0.2, 0.0]])
    share = positive_share(scores)
    assert share.dtype == torch.float64
    assert share.tolist() == [0.75, 0.5, 0.0]  # zero is not positive
    with pytest.raises(ValueError, match="shape"):
        positive_share(torch.zeros(3))
    with pytest.raises(ValueError, match=r"item_scores\[1, 2\] is nan"):
        positive_share(torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, float("nan")]]))


def test_kinship_matrix_with_tokenizer_end_to_end():
    from culnig_ext.reporting.analysis import kinship_matrix
    from culnig_ext.data.prompts import encode_choices
    from tests.intervention.test_evaluate import char_model, char_tokenizer, mc_items

    tokenizer, model, items = char_tokenizer(), char_model(seed=2), mc_items()
    g = torch.Generator().manual_seed(0)
    sets = {
        "US": NeuronSet.from_pairs([("layers.1.mlp.gate_proj", int(i)) for i in torch.randperm(48, generator=g)[:30]]),
        "JP": NeuronSet.from_pairs(
            [("layers.0.self_attn.q_proj", int(i)) for i in torch.randperm(32, generator=g)[:20]]
        ),
    }
    run = kinship_matrix(model, tokenizer, items, sets, format="cloze", batch_size=3)
    encs = [encode_choices(item, tokenizer, format="cloze") for item in items]

    def group_acc(m):
        return _reference_group_acc(m, items, encs)

    base = group_acc(model)
    assert run.result.groups == ["US", "JP"] and run.result.targets == ["US", "JP"]
    expected = [[base[c] - group_acc(_ablated(model, sets[t]))[c] for c in ("US", "JP")] for t in ("US", "JP")]
    np.testing.assert_allclose(run.result.matrix, expected, atol=1e-12)
    assert np.abs(np.array(expected)).max() > 0
