"""The pipeline's helpers on their own, expectations by hand: the instance-view section, the seeded test sample,
file-name slugs, and when a saved score table is reused or scored again."""
from __future__ import annotations

import contextlib
import io
import logging

import torch

from culnig_ext.selection.neurons import NeuronSet
from culnig_ext._utils.names import slug
from culnig_ext.data.splits import sample_items
from culnig_ext.scoring.cache import score_cached
from culnig_ext.studies.pipeline import instance_view
from tests.fixtures import random_items, tiny_model


def test_instance_view_lists_the_top_neurons_by_score():
    pairs = [("layers.0.mlp.gate_proj", i, float(i)) for i in range(17)]
    general = NeuronSet.from_pairs(pairs)
    shares = torch.tensor([i / 20 for i in range(17)], dtype=torch.float64)
    text = instance_view(general, shares, n_items=20)
    lines = text.splitlines()
    assert lines[:9] == [
        "", "## Instance view", "",
        "Share of the 20 scoring items on which a culture-general neuron's item score (max over tokens of a * dP/da) "
        "is positive: mean 40.0%, median 40.0%, min 0.0%, max 80.0%.",
        "", "Top 15 neurons by score:", "", "| neuron | score | share of items positive |", "|---|---:|---:|"]
    assert len(lines) == 9 + 15
    rows = [line for line in lines if line.startswith("| layers.")]
    # NeuronSet keeps model order (index order here); the rows go by score, highest first: indices 16 .. 2
    assert rows == [f"| layers.0.mlp.gate_proj[{i}] | {i:.4g} | {i / 20:.1%} |" for i in range(16, 1, -1)]
    assert text.endswith("|\n")
    assert instance_view(NeuronSet([]), torch.zeros(0), n_items=5) == ""
    one = instance_view(NeuronSet.from_pairs([("layers.1.self_attn.q_proj", 3, -0.5)]), torch.tensor([0.25]), 4)
    assert "Top 1 neurons by score:" in one and "| layers.1.self_attn.q_proj[3] | -0.5 | 25.0% |" in one
    assert len(instance_view(general, shares, 20, top=3).splitlines()) == len(lines) - 12


def test_sample_is_seeded_sorted_and_capped():
    items = list(range(10))
    assert sample_items(items, None, 0) is items and sample_items(items, 10, 0) is items and sample_items(items, 12, 3) is items
    got = sample_items(items, 4, seed=5)
    g = torch.Generator().manual_seed(5)
    assert got == sorted(torch.randperm(10, generator=g)[:4].tolist())
    assert sample_items(items, 4, seed=5) == got and sample_items(items, 4, seed=6) != got


def test_slug():
    assert slug("Cultural test (BLEnD-style)") == "cultural_test__blend-style"
    assert slug("South_Korea") == "south_korea" and slug("a/b\\c") == "a_b_c" and slug("__x y__") == "x_y"
    assert slug("Xhosa X") == "xhosa_x"  # only "_" is stripped from the ends


def test_score_cached_reuses_only_the_same_model_items_and_clamp(tmp_path):
    model = tiny_model("llama")
    model.config._name_or_path = "tiny-a"
    items = random_items(4, seed=8)
    path = tmp_path / "t.safetensors"

    def cached(m, its, clamp):
        # The library logs (the culnig logger) and prints nothing.
        out, logged = io.StringIO(), io.StringIO()
        handler, logger = logging.StreamHandler(logged), logging.getLogger("culnig")
        handler.setFormatter(logging.Formatter("[culnig] %(message)s"))
        level = logger.level
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        try:
            with contextlib.redirect_stdout(out):
                table = score_cached(path, m, its, clamp_min=clamp, batch_size=4, progress=False, desc="d")
        finally:
            logger.removeHandler(handler)
            logger.setLevel(level)
        assert out.getvalue() == ""
        return table, logged.getvalue()

    first, printed = cached(model, items, None)
    assert "[culnig] d: scoring 4 items" in printed and first.metadata["model"] == "tiny-a"
    again, printed = cached(model, items, None)
    assert f"[culnig] d: reusing {path}" in printed and again.fingerprint() == first.fingerprint()
    _, printed = cached(model, items, 0.0)  # another clamp
    assert "scoring 4 items" in printed
    _, printed = cached(model, random_items(4, seed=9), 0.0)  # other items
    assert "scoring 4 items" in printed
    model.config._name_or_path = "tiny-b"  # another model
    table, printed = cached(model, random_items(4, seed=9), 0.0)
    assert "scoring 4 items" in printed and table.metadata["model"] == "tiny-b"
    _, printed = cached(model, random_items(4, seed=9), 0.0)
    assert "reusing" in printed
