"""The seams between modules, checked against references written here (a mutation run found them unguarded);
the pipeline's seams are in ``test_seams_pipeline.py``.

- ``prob_sums`` (the divisor of ``normalize="prob"``) through merge, shards and checkpoint resume, against P(y|x)
  summed by a plain float64 forward pass;
- refusals: a checkpoint written for other items, another model or another clamp; merges of tables of another
  model, clamp or sites, or of the same items twice;
- the paired bootstrap's p-value against the exact bootstrap probability (dynamic programming);
- the CLI: every ``culnig run`` option lands in its ``RunConfig`` field; ``culnig score``/``identify`` options
  reach the calls they should;
- interrupted writes: the write itself fails part-way (half the bytes written, then ENOSPC) and every writer
  (score tables, neuron sets, evaluation records, report files, JSONL) leaves the old file as it was and no temp
  file behind.
"""
from __future__ import annotations

import builtins
import contextlib
import copy
import errno
import io
import math
import sys
from dataclasses import asdict, fields
from pathlib import Path

import numpy as np
import pytest
import torch

import culnig_ext
from culnig_ext import select
from culnig_ext.cli import main as cli
from culnig_ext.data import load_items
from culnig_ext.intervention.evaluate import EvalResult, evaluate_encoded
from culnig_ext.selection.neurons import NeuronSet
from culnig_ext.studies.pipeline import QUICK_PRESET, RunConfig
from culnig_ext.scoring.table import ScoreTable
from tests.fixtures import random_items, tiny_model
from tests.fixtures import one_thread  # noqa: F401  (autouse: one intra-op thread for the tiny models)


# ================================================================================== references (float64 autograd)
def reference_probs(model, items) -> list[float]:
    """P(y|x) of each item: one unpadded float64 forward per item, the teacher-forced product of the targets'
    softmax probabilities."""
    model64 = copy.deepcopy(model).to(torch.float64)
    out = []
    with torch.no_grad():
        for item in items:
            targets = list(item["target_ids"]) if "target_ids" in item else [item["answer_id"]]
            ids = torch.tensor([list(item["input_ids"]) + targets[:-1]])
            logp = torch.log_softmax(model64(input_ids=ids).logits[0], dim=-1)
            n = len(targets)
            picked = logp[-n:].gather(1, torch.tensor(targets)[:, None]).sum()
            out.append(math.exp(float(picked)))
    return out


def prob_sums_by_group(model, items, groups) -> list[float]:
    probs = reference_probs(model, items)
    return [sum(p for p, it in zip(probs, items) if it["group"] == g) for g in groups]


# ======================================================================================= prob_sums and merges
def hand_table(groups, counts, prob_sums, fill, *, model="m", clamp="", fingerprint="f", width=3):
    sums = {"layers.0.mlp.gate_proj": torch.full((len(groups), width), float(fill), dtype=torch.float64)
            + torch.arange(len(groups), dtype=torch.float64)[:, None]}
    return ScoreTable(groups, counts, sums, prob_sums,
                      {"model": model, "clamp_min": clamp, "dataset_fingerprint": fingerprint})


def test_merge_adds_counts_prob_sums_and_sums_by_group_name():
    a = hand_table(["A", "B"], [2, 3], [0.25, 0.5], 1.0, fingerprint="fa")
    b = hand_table(["C", "A"], [4, 1], [0.125, 2.0], 10.0, fingerprint="fb")
    merged = ScoreTable.merge([a, b])
    assert merged.groups == ["A", "B", "C"]
    assert merged.counts.tolist() == [3, 3, 4]
    assert merged.prob_sums.tolist() == [2.25, 0.5, 0.125]  # A: 0.25 + 2.0
    # rows: a has A=1, B=2; b has C=10, A=11
    assert merged["layers.0.mlp.gate_proj"].tolist() == [[12.0] * 3, [2.0] * 3, [10.0] * 3]
    assert merged.normalizer("prob").tolist() == [2.25, 0.5, 0.125]
    assert merged.normalizer("count").tolist() == [3.0, 3.0, 4.0]


def test_shards_merge_prob_sums_equal_the_full_table_and_a_reference():
    model = tiny_model("llama")
    items = random_items(9, seed=21, multi_token=True)
    full = culnig_ext.score(model, items, batch_size=4, progress=False)
    shards = [culnig_ext.score(model, items, batch_size=2, progress=False, shard=(k, 3)) for k in range(3)]
    for k, shard in enumerate(shards):
        own = items[k::3]
        want = prob_sums_by_group(model, own, shard.groups)
        torch.testing.assert_close(shard.prob_sums, torch.tensor(want, dtype=torch.float64), rtol=1e-5, atol=0)
    merged = ScoreTable.merge(shards)
    want = prob_sums_by_group(model, items, full.groups)
    assert all(w > 0 for w in want)
    torch.testing.assert_close(full.prob_sums, torch.tensor(want, dtype=torch.float64), rtol=1e-5, atol=0)
    order = [merged.groups.index(g) for g in full.groups]
    torch.testing.assert_close(merged.prob_sums[order], full.prob_sums, rtol=1e-12, atol=0)
    # normalize="prob" selection against a control set then agrees too (the divisors set the contrast's balance).
    ctrl = culnig_ext.score(model, random_items(5, seed=31), batch_size=5, progress=False, clamp_min=0.0)
    top = select.general(full, ctrl, None, 0.05, 0.05, 0, 0, normalize="prob")
    assert len(top) == math.floor(96 * 0.05) + math.floor(128 * 0.05)
    assert select.general(merged, ctrl, None, 0.05, 0.05, 0, 0, normalize="prob").pairs == top.pairs


class _Interrupt(Exception):
    """A crash in the middle of scoring."""


def _interrupted_then_resumed(model, items, ckpt, *, batch_size, crash_at, clamp_min=None):
    calls = {"n": 0}

    def crash(module, args):
        calls["n"] += 1
        if calls["n"] == crash_at:
            raise _Interrupt()

    handle = model.get_input_embeddings().register_forward_pre_hook(crash)
    try:
        with pytest.raises(_Interrupt):
            culnig_ext.score(model, items, batch_size=batch_size, progress=False, checkpoint=ckpt,
                             checkpoint_every=1, clamp_min=clamp_min)
    finally:
        handle.remove()
    assert ckpt.is_file()
    return culnig_ext.score(model, items, batch_size=batch_size, progress=False, checkpoint=ckpt,
                            checkpoint_every=1, clamp_min=clamp_min)


def test_resume_restores_prob_sums(tmp_path):
    model = tiny_model("llama")
    items = random_items(10, seed=22)
    full = culnig_ext.score(model, items, batch_size=2, progress=False)
    resumed = _interrupted_then_resumed(model, items, tmp_path / "p.safetensors", batch_size=2, crash_at=4)
    assert resumed.counts.tolist() == full.counts.tolist()
    torch.testing.assert_close(resumed.prob_sums, full.prob_sums, rtol=1e-12, atol=0)
    want = prob_sums_by_group(model, items, full.groups)
    torch.testing.assert_close(resumed.prob_sums, torch.tensor(want, dtype=torch.float64), rtol=1e-5, atol=0)
    for site in full.sites:
        torch.testing.assert_close(resumed[site], full[site], rtol=1e-12, atol=0)


def _checkpoint_after_crash(model, items, ckpt, **kw):
    calls = {"n": 0}

    def crash_second(module, args):
        calls["n"] += 1
        if calls["n"] == 2:
            raise _Interrupt()

    handle = model.get_input_embeddings().register_forward_pre_hook(crash_second)
    try:
        with pytest.raises(_Interrupt):
            culnig_ext.score(model, items, batch_size=2, progress=False, checkpoint=ckpt, checkpoint_every=1, **kw)
    finally:
        handle.remove()
    assert ckpt.is_file()
    return ckpt.read_bytes()


@pytest.mark.parametrize("what", ["items", "model", "clamp"])
def test_foreign_checkpoint_is_refused_and_left_alone(tmp_path, what):
    model = tiny_model("llama")
    model.config._name_or_path = "tiny-a"
    items = random_items(6, seed=23)
    ckpt = tmp_path / "partial.safetensors"
    before = _checkpoint_after_crash(model, items, ckpt)
    kw = {}
    if what == "items":
        items = random_items(6, seed=24)
    elif what == "model":
        model = tiny_model("llama", seed=5)
        model.config._name_or_path = "tiny-b"
    else:
        kw["clamp_min"] = 0.0
    with pytest.raises(ValueError) as info:
        culnig_ext.score(model, items, batch_size=2, progress=False, checkpoint=ckpt, **kw)
    assert ckpt.name in str(info.value)
    assert ckpt.read_bytes() == before  # neither overwritten nor removed


def test_merge_refuses_other_model_clamp_sites_and_the_same_items_twice():
    a = hand_table(["A"], [1], [0.5], 1.0, fingerprint="fa")
    b = hand_table(["B"], [1], [0.5], 1.0, fingerprint="fb")
    with pytest.raises(ValueError, match="table 1 has model='other', table 0 has 'm'"):
        ScoreTable.merge([a, hand_table(["A"], [1], [0.5], 1.0, model="other", fingerprint="fc")])
    with pytest.raises(ValueError, match="table 2 has clamp_min='0.0', table 0 has ''"):
        ScoreTable.merge([a, b, hand_table(["A"], [1], [0.5], 1.0, clamp="0.0", fingerprint="fc")])
    with pytest.raises(ValueError, match="table 2 has different sites or widths"):
        ScoreTable.merge([a, b, hand_table(["A"], [1], [0.5], 1.0, width=4, fingerprint="fc")])
    with pytest.raises(ValueError, match="table 0 and table 2 were scored on the same items"):
        ScoreTable.merge([a, b, hand_table(["A"], [1], [0.5], 2.0, fingerprint="fa")])
    with pytest.raises(ValueError, match="at least one table"):
        ScoreTable.merge([])
    assert ScoreTable.merge([a]).counts.tolist() == [1]


def test_merging_a_shard_twice_is_refused():
    model = tiny_model("llama")
    items = random_items(6, seed=25)
    shards = [culnig_ext.score(model, items, batch_size=3, progress=False, shard=(k, 2)) for k in range(2)]
    assert ScoreTable.merge(shards).num_items == 6
    with pytest.raises(ValueError, match="share 3 item"):
        ScoreTable.merge([shards[0], shards[1], shards[0]])


# ---------------------------------------------------------------------------------- p-values, kinship, shares
def bootstrap_p_less(a: np.ndarray, b: np.ndarray, n_resamples: int, seed: int) -> float:
    """The documented rule, written out: resample items with numpy's default_rng(seed).integers(0, n, (R, n));
    p = (1 + #{sum of resampled d <= 2 * sum d}) / (1 + R), d = a - mean over runs of b."""
    d = a.astype(np.float64) - b.astype(np.float64).mean(axis=0)
    n = d.size
    idx = np.random.default_rng(seed).integers(0, n, size=(n_resamples, n))
    sums = d[idx].sum(axis=1)
    return min(1.0, (1 + int((sums <= 2 * d.sum() + 1e-9 * max(1.0, np.abs(d).sum())).sum())) / (1 + n_resamples))


def exact_bootstrap_p_less(d: np.ndarray) -> float:
    """The exact (infinite-R) bootstrap probability P(sum of n draws with replacement from d <= 2 sum d), by
    dynamic programming over the distribution of the running sum (d holds few distinct values)."""
    n = d.size
    values, counts = np.unique(d, return_counts=True)
    probs = counts / n
    dist = {0.0: 1.0}
    for _ in range(n):
        nxt: dict[float, float] = {}
        for s, p in dist.items():
            for v, q in zip(values, probs):
                key = round(s + float(v), 9)
                nxt[key] = nxt.get(key, 0.0) + p * q
        dist = nxt
    limit = 2 * float(d.sum()) + 1e-9
    return sum(p for s, p in dist.items() if s <= limit)


@pytest.mark.parametrize("seed", [0, 3])
def test_paired_bootstrap_p_value_is_close_to_the_exact_bootstrap_probability(seed):
    from culnig_ext.stats.bootstrap import paired_bootstrap

    rng = np.random.default_rng(100 + seed)
    a = (rng.random(9) < 0.35).astype(float)
    b = (rng.random((3, 9)) < 0.6).astype(float)
    d = a - b.mean(axis=0)
    exact = exact_bootstrap_p_less(d)
    got = paired_bootstrap(a, b, n_resamples=20000, seed=seed, alternative="less")
    # binomial standard error of the Monte Carlo estimate at R = 20000 is at most 0.0036
    assert abs(got.p_value - exact) < 0.015
    assert got.diff == pytest.approx(d.mean(), abs=1e-15)
    assert got.p_value == pytest.approx(bootstrap_p_less(a, b, 20000, seed), rel=1e-12)


# ==================================================================================== CLI -> configuration
def test_every_run_option_lands_in_its_config_field(monkeypatch, tmp_path):
    import culnig_ext.studies.pipeline as pipeline

    seen = []

    class Done(Exception):
        """Raised by the fake pipeline once it has seen the config."""

    def fake_run(cfg, **kw):
        seen.append(cfg)
        raise Done()

    monkeypatch.setattr(pipeline, "run_pipeline", fake_run)
    argv = ["run", "--out", str(tmp_path / "o"), "--recipe", "language", "--model", "smollm2", "--data", "builtin:general",
            "--crc", "builtin:countryrc-test", "--crc-test", "builtin:countryrc", "--general", "builtin:cultural",
            "--format", "letter", "--control", "frame", "--normalize", "prob", "--contrast-general",
            "--t-mlp", "0.11", "--t-attn", "0.12", "--r-mlp", "0.13", "--r-attn", "0.14", "--t-specific", "0.15",
            "--r-specific", "0.16", "--z-min", "0.17", "--random", "4", "--no-kinship", "--max-test-items", "9",
            "--max-scoring-items", "7", "--n-boot", "2", "--batch-size", "5", "--dtype", "bfloat16", "--device", "cpu",
            "--seed", "6", "--no-progress", "--no-instance-view", "--max-per-question", "none", "--n-parts", "4",
            "--device-map", "auto", "--attn-implementation", "eager", "--no-checkpoint",
            "--checkpoint-every", "7", "--checkpoint-activations", "--finetune", "--finetune-task", "t.jsonl",
            "--finetune-task-test", "u.jsonl", "--finetune-max-train-items", "8", "--finetune-end", "top",
            "--finetune-budget", "0.2", "--finetune-by", "density", "--finetune-lora", "--finetune-epochs", "2",
            "--finetune-lr", "0.001", "--finetune-train-batch-size", "3", "--finetune-grad-accum", "2",
            "--finetune-max-steps", "5", "--protocol", "paper", "--paper-random", "2", "--saq", "blend_dir",
            "--saq-max-per-country", "3", "--saq-max-new-tokens", "11", "--format-probe-max", "12",
            "--kinship-groups", "3", "--threads", "2", "--no-full", "--deterministic"]
    with pytest.raises(Done):
        cli.main(argv)
    want = RunConfig(out=str(tmp_path / "o"), recipe="language", model="smollm2", data="builtin:general", crc="builtin:countryrc-test",
                     crc_test="builtin:countryrc", general="builtin:cultural", format="letter", control="frame",
                     normalize="prob", contrast_general=True, t_mlp=0.11, t_attn=0.12, r_mlp=0.13, r_attn=0.14,
                     t_specific=0.15, r_specific=0.16, z_min=0.17, n_random=4, kinship=False,
                     instance_view=False, max_test_items=9, max_scoring_items=7, n_boot=2, batch_size=5,
                     dtype="bfloat16", device="cpu", seed=6, max_per_question=None, n_parts=4,
                     progress=False, device_map="auto", attn_implementation="eager", checkpoint=False,
                     checkpoint_every=7, checkpoint_activations=True, finetune=True, finetune_task="t.jsonl",
                     finetune_task_test="u.jsonl", finetune_max_train_items=8, finetune_end="top",
                     finetune_budget=0.2, finetune_by="density", finetune_lora=True, finetune_epochs=2,
                     finetune_lr=0.001, finetune_train_batch_size=3, finetune_grad_accum=2, finetune_max_steps=5,
                     protocol="paper", n_random_paper=2, saq="blend_dir", saq_max_per_country=3,
                     saq_max_new_tokens=11, format_probe_max=12, kinship_groups=3, threads=2, full=False,
                     deterministic=True)
    got = asdict(seen[0])
    for f in fields(RunConfig):
        if f.name in asdict(want):
            assert got[f.name] == asdict(want)[f.name], f.name
    # Every field the CLI offers was given a non-default value above, so each one is checked.
    defaults = asdict(RunConfig())
    unchecked = [k for k, v in asdict(want).items() if v == defaults[k] and k not in ("model",)]
    assert unchecked == []
    study = seen[0].study_settings()  # --finetune: the study's settings from the finetune_* options
    assert (study.ends, study.budget, study.by, study.lora, study.epochs, study.lr, study.batch_size,
            study.grad_accum, study.max_steps, study.seed) == (("top",), 0.2, "density", True, 2, 0.001, 3, 2, 5, 6)

    # No options on the embedded default model: the quick study, else the RunConfig defaults (the paper's
    # values), progress on; --full: the RunConfig defaults themselves.
    seen.clear()
    with pytest.raises(Done):
        cli.main(["run"])
    assert asdict(seen[0]) == {**defaults, **QUICK_PRESET}
    seen.clear()
    with pytest.raises(Done):
        cli.main(["run", "--full"])
    assert asdict(seen[0]) == {**defaults, "full": True}
    seen.clear()
    with pytest.raises(Done):
        cli.main(["run", "--general", ""])
    assert seen[0].general is None


def test_score_options_reach_the_loader_the_encoder_and_the_scorer(monkeypatch, tmp_path):
    import culnig_ext.data as data
    import culnig_ext.models.loading as models
    import culnig_ext.scoring.scorer as scorer
    import culnig_ext.data.streaming as streaming

    calls = {}
    model = tiny_model("llama", dtype=torch.float32)

    def fake_load_items(source, **kw):
        calls["load_items"] = (source, kw)
        return ["item"]

    def fake_load_model(name, **kw):
        calls["load_model"] = (name, kw)
        return model, "tok"

    def fake_encode(items, tok, **kw):
        calls["encode"] = (items, tok, kw)
        return random_items(4)

    real_score = scorer.score

    def fake_score(m, items, **kw):
        calls["score"] = kw
        return real_score(m, items, batch_size=kw["batch_size"], progress=False, checkpoint=kw["checkpoint"])

    import culnig_ext.data.sources as sources
    import culnig_ext.studies.preflight as preflight  # imported now: imported under the patch, it would keep the fake

    for module in (data, sources, preflight):  # wherever the loader is looked up
        monkeypatch.setattr(module, "load_items", fake_load_items)
    monkeypatch.setattr(models, "load_model", fake_load_model)
    monkeypatch.setattr(streaming, "encoded", fake_encode)  # culnig score encodes lazily (streams)
    monkeypatch.setattr(scorer, "score", fake_score)
    out = tmp_path / "t.safetensors"
    argv = ["score", "--model", "smollm2", "--data", "builtin:cultural", "--split", "neur", "--format", "cloze",
            "--control", "frame", "--seed", "4", "--batch-size", "3", "--dtype", "bfloat16", "--device", "cpu",
            "--no-progress", "--attn-implementation", "eager", "--sites", "layers.0.mlp.gate_proj",
            "--max-items", "3", "--checkpoint-every", "2", "--checkpoint-activations", "--out", str(out)]
    with contextlib.redirect_stdout(io.StringIO()):
        assert cli.main(argv) == 0
    assert calls["load_items"] == ("builtin:cultural", {"split": "neur", "seed": 4, "max_per_question": 5})
    assert calls["load_model"] == ("smollm2", {"dtype": "bfloat16", "device": "cpu", "device_map": None,
                                               "attn_implementation": "eager"})
    assert calls["encode"] == (["item"], "tok", {"format": "cloze", "control": "frame"})
    assert calls["score"] == {  # a control set clamps at 0; the checkpoint sits next to the output by default
        "batch_size": 3, "clamp_min": 0.0, "progress": False, "sites": ["layers.0.mlp.gate_proj"], "shard": None,
        "max_items": 3, "checkpoint": f"{out}.ckpt", "checkpoint_every": 2, "keep_checkpoint": True,
        "provenance": {"prompt_format": "cloze", "control": "frame"}, "checkpoint_activations": True}
    assert ScoreTable.load(out).num_items == 4
    argv = ["score", "--data", "builtin:cultural", "--clamp-min", "-0.5", "--shard", "1/2", "--checkpoint", "none",
            "--out", str(out)]
    with contextlib.redirect_stdout(io.StringIO()):
        assert cli.main(argv) == 0
    assert calls["encode"][2] == {"format": "letter", "control": None}
    assert {k: calls["score"][k] for k in ("batch_size", "clamp_min", "progress", "shard", "checkpoint", "sites",
                                           "checkpoint_activations")} == {
        "batch_size": 16, "clamp_min": -0.5, "progress": True, "shard": (1, 2), "checkpoint": None, "sites": None,
        "checkpoint_activations": False}
    assert calls["load_items"] == ("builtin:cultural", {"split": "all", "seed": 0, "max_per_question": 5})


def _saved_tables(tmp_path):
    model = tiny_model("llama")
    paths = {}
    for name, seed in (("neur", 1), ("ctrl", 2), ("crc", 3), ("gen", 4)):
        t = culnig_ext.score(model, random_items(6, seed=seed), batch_size=6, progress=False,
                             clamp_min=0.0 if name in ("ctrl", "gen") else None)
        paths[name] = t.save(tmp_path / f"{name}.safetensors")
    return paths


def test_identify_options_reach_the_selection(monkeypatch, tmp_path):
    paths = _saved_tables(tmp_path)
    calls = []
    real_general, real_specific = select.general, select.specific

    def spy_general(*args, **kw):
        calls.append(("general", args, kw))
        return real_general(*args, **kw)

    def spy_specific(*args, **kw):
        calls.append(("specific", args, kw))
        return real_specific(*args, **kw)

    monkeypatch.setattr(select, "general", spy_general)
    monkeypatch.setattr(select, "specific", spy_specific)
    out = tmp_path / "g.json"
    argv = ["identify", "general", "--neur", str(paths["neur"]), "--ctrl", str(paths["ctrl"]), "--crc",
            str(paths["crc"]), "--contrast", str(paths["gen"]), "--normalize", "prob", "--t-mlp", "0.3",
            "--t-attn", "0.2", "--r-mlp", "0.05", "--r-attn", "0.04", "--out", str(out)]
    with contextlib.redirect_stdout(io.StringIO()):
        assert cli.main(argv) == 0
    kind, args, kw = calls[-1]
    neur, ctrl, crc = args[:3]
    assert kind == "general" and tuple(args[3:]) == (0.3, 0.2, 0.05, 0.04)
    assert (neur.fingerprint(), ctrl.fingerprint(), crc.fingerprint()) == tuple(
        ScoreTable.load(paths[k]).fingerprint() for k in ("neur", "ctrl", "crc"))
    assert kw["normalize"] == "prob" and kw["contrast"].fingerprint() == ScoreTable.load(paths["gen"]).fingerprint()
    assert NeuronSet.load(out).params["t_mlp"] == 0.3

    out = tmp_path / "spec"
    argv = ["identify", "specific", "--neur", str(paths["neur"]), "--ctrl", str(paths["ctrl"]), "--all-groups",
            "--t", "0.2", "--r", "0.0", "--z-min", "-1", "--normalize", "count", "--out", str(out)]
    with contextlib.redirect_stdout(io.StringIO()):
        assert cli.main(argv) == 0
    spec = [c for c in calls if c[0] == "specific"]
    assert [c[1][3] for c in spec] == ["A", "B", "C"]
    for _, args, kw in spec:
        assert args[2] is None and tuple(args[4:]) == (0.2, 0.0, -1.0) and kw == {"normalize": "count"}
    assert sorted(p.name for p in out.iterdir()) == ["a.json", "b.json", "c.json"]
    # Without --normalize the paper's defaults: "count" for general, "total" for specific.
    calls.clear()
    argv = ["identify", "specific", "--neur", str(paths["neur"]), "--group", "B", "--out", str(tmp_path / "b.json")]
    with contextlib.redirect_stdout(io.StringIO()):
        assert cli.main(argv) == 0
    assert calls[-1][1][3:] == ("B", 0.003, 0.01, 0.5) and calls[-1][2] == {"normalize": "total"}
    argv = ["identify", "general", "--neur", str(paths["neur"]), "--out", str(tmp_path / "g2.json")]
    with contextlib.redirect_stdout(io.StringIO()):
        assert cli.main(argv) == 0
    assert calls[-1][1][1:] == (None, None, 0.01, 0.002, 0.01, 0.01)
    assert calls[-1][2] == {"normalize": "count", "contrast": None}


# ================================================================================= interrupted writes
class _PartialWrites:
    """Make writes to files whose name is ``target`` (or its temp file ``.target.*``) write half their bytes and
    then fail with ENOSPC, at the level of Python's ``open`` (what ``Path.write_text/bytes`` and ``json``/``open``
    writers use) and of safetensors' ``save_file`` (a Rust writer)."""

    def __init__(self, monkeypatch, target: str):
        self.target = target
        self.hits = 0
        real_open = builtins.open

        def matches(file) -> bool:
            name = Path(str(file)).name if isinstance(file, (str, Path)) else ""
            return name == target or name.startswith(f".{target}.")

        outer = self

        class HalfFile:
            def __init__(self, f):
                self._f = f

            def write(self, data):
                outer.hits += 1
                self._f.write(data[: max(1, len(data) // 2)])
                self._f.flush()
                raise OSError(errno.ENOSPC, "No space left on device (injected)")

            def __getattr__(self, name):
                return getattr(self._f, name)

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                self._f.close()

        def fake_open(file, mode="r", *args, **kw):
            f = real_open(file, mode, *args, **kw)
            if matches(file) and any(c in mode for c in "wax+"):
                return HalfFile(f)
            return f

        monkeypatch.setattr(builtins, "open", fake_open)
        monkeypatch.setattr(io, "open", fake_open)
        from safetensors import torch as st_torch

        real_save = st_torch.save_file

        def fake_save(tensors, filename, metadata=None):
            if not matches(filename):
                return real_save(tensors, filename, metadata=metadata)
            outer.hits += 1
            data = st_torch.save(tensors, metadata=metadata)
            with real_open(filename, "wb") as f:
                f.write(data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device (injected)")

        for name, module in list(sys.modules.items()):
            if (name == "safetensors.torch" or name.startswith("culnig_ext")) and \
                    getattr(module, "save_file", None) is real_save:
                monkeypatch.setattr(module, "save_file", fake_save)


def _assert_interrupted_write_keeps(monkeypatch, path: Path, write) -> None:
    before = path.read_bytes()
    with monkeypatch.context() as m:
        faults = _PartialWrites(m, path.name)
        with pytest.raises(OSError) as info:
            write()
    assert faults.hits >= 1, "the write never reached the disk: nothing was interrupted"
    assert info.value.errno == errno.ENOSPC
    assert path.read_bytes() == before
    assert [p.name for p in path.parent.iterdir() if p.name.startswith(f".{path.name}.")] == []  # no temp file


def test_interrupted_writes_keep_old_score_tables(monkeypatch, tmp_path):
    model = tiny_model("llama")
    old = culnig_ext.score(model, random_items(3, seed=1), batch_size=3, progress=False)
    new = culnig_ext.score(model, random_items(4, seed=2), batch_size=4, progress=False)
    path = old.save(tmp_path / "t.safetensors")
    _assert_interrupted_write_keeps(monkeypatch, path, lambda: new.save(path))
    assert ScoreTable.load(path).fingerprint() == ScoreTable.load(path).fingerprint() and \
        ScoreTable.load(path).num_items == 3


def test_interrupted_writes_keep_old_neuron_sets_and_eval_records(monkeypatch, tmp_path):
    path = NeuronSet.from_pairs([("layers.0.mlp.gate_proj", 1)]).save(tmp_path / "n.json")
    bigger = NeuronSet.from_pairs([("layers.0.mlp.gate_proj", i) for i in range(50)])
    _assert_interrupted_write_keeps(monkeypatch, path, lambda: bigger.save(path))
    assert len(NeuronSet.load(path)) == 1

    model = tiny_model("llama", dtype=torch.float32)
    items = load_items("builtin:cultural", split="test")[:3]
    encodings = [type("E", (), {"prompt_ids": [5, 6, 7], "choice_ids": [[8 + j] for j in range(len(it.choices))]})()
                 for it in items]
    res = evaluate_encoded(model, items, encodings, format="cloze", progress=False)
    path = tmp_path / "e.json"
    EvalResult(res.records[:1], "cloze").save(path)
    _assert_interrupted_write_keeps(monkeypatch, path, lambda: res.save(path))
    assert len(EvalResult.load(path).records) == 1


def test_interrupted_writes_keep_old_report_files(monkeypatch, tmp_path):
    from culnig_ext.reporting.report import write_report

    def results(inhibited):
        return {"title": "t", "model": "m", "neuron_set": "s", "n_neurons": 2,
                "rows": [{"eval_set": "x", "original": 0.5, "inhibited": inhibited, "random": [0.5, 0.25],
                          "p_value": 0.04, "n_items": 4}],
                "kinship": {"targets": ["A"], "groups": ["A", "B"], "matrix": [[inhibited, 0.0]]},
                "layers": {"num_layers": 2, "counts": {"mlp": [1, int(10 * inhibited)], "attn": [0, 1]}}}

    write_report(tmp_path, results(0.25))
    # Each file in turn: the ones written before it in the same call are new by then, the failing one stays old.
    for name in ("results.json", "kinship.png", "layers.png", "report.md"):
        _assert_interrupted_write_keeps(monkeypatch, tmp_path / name, lambda: write_report(tmp_path, results(0.5)))


def test_interrupted_writes_keep_old_jsonl(monkeypatch, tmp_path):
    from culnig_ext.data.jsonl import write_jsonl

    items = load_items("builtin:cultural")
    path = write_jsonl(items[:2], tmp_path / "items.jsonl")
    _assert_interrupted_write_keeps(monkeypatch, path, lambda: write_jsonl(items, path))
    assert len(path.read_text().splitlines()) == 2
