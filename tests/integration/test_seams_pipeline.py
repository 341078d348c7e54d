"""Seams of the pipeline, against references written here, on one small run of a tiny random Llama (builtin data):

- the saved "general" and "random" evaluation records equal evaluations of deep copies of the model whose weights
  are zeroed by hand (q/k/v rows, gate rows; SiLU(0) = 0), and ``evaluate_conditions`` inhibits each set;
- the report's p-values are a paired bootstrap recomputed from the saved per-item records (same seed and rule);
- its kinship cells are per-group accuracy drops of weight-ablated copies;
- the instance view's shares are recomputed with plain float64 autograd;
- ``culnig evaluate`` options reach the conditions; an interrupted write of the run config or summary keeps the
  old file.
"""
from __future__ import annotations

import contextlib
import copy
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from culnig_ext import select
from culnig_ext.cli import main as cli
from culnig_ext.data import encode, encode_choices, load_items
from culnig_ext.intervention.evaluate import EvalResult, evaluate_encoded
from culnig_ext.data.items import as_score_items
from culnig_ext.models.loading import load_model
from culnig_ext.selection.neurons import NeuronSet
from culnig_ext.studies.conditions import Condition, evaluate_conditions
from culnig_ext.studies.pipeline import RunConfig, run_pipeline
from tests.studies.test_pipeline import FRACTIONS, GROUPS, save_tiny_model
from tests.integration.test_seams import _assert_interrupted_write_keeps, bootstrap_p_less
from tests.fixtures import one_thread  # noqa: F401  (autouse: one intra-op thread for the tiny models)

MAX_TEST = 8
EVAL_SLUGS = {"Cultural test (BLEnD-style)": "cultural_test__blend-style", "CountryRC test": "countryrc_test",
              "General knowledge": "general_knowledge"}


# ============================================================================== the pipeline's conditions
def weight_ablated(model, neurons: NeuronSet):
    """A deep copy of ``model`` with each chosen neuron removed from the weights: q/k/v neurons are rows of the
    projection (and bias); a gate neuron is a row of gate_proj, and SiLU(0) = 0 removes its MLP unit."""
    ablated = copy.deepcopy(model)
    layers = ablated.model.layers
    with torch.no_grad():
        for n in neurons:
            parts = n.site.split(".")
            layer, block, proj = int(parts[1]), parts[2], parts[3]
            module = getattr(getattr(layers[layer], block), proj)
            module.weight[n.index].zero_()
            if getattr(module, "bias", None) is not None:
                module.bias[n.index].zero_()
    return ablated


def assert_same_records(got: EvalResult, want: EvalResult):
    assert [r.id for r in got.records] == [r.id for r in want.records]
    for g, w in zip(got.records, want.records):
        assert g.pred == w.pred and g.correct == w.correct, g.id
        np.testing.assert_allclose(g.option_scores, w.option_scores, rtol=1e-4, atol=1e-4)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("seams_llama"))


@pytest.fixture(scope="module")
def run(model_dir, tmp_path_factory):
    cfg = RunConfig(out=str(tmp_path_factory.mktemp("seams_run") / "r"), model=str(model_dir), format="cloze",
                    data="builtin:cultural", crc="builtin:countryrc", crc_test="builtin:countryrc-test", n_random=2, max_test_items=MAX_TEST, progress=False, **FRACTIONS)
    with contextlib.redirect_stdout(io.StringIO()):
        result = run_pipeline(cfg)
    model, tokenizer = load_model(str(model_dir))
    return cfg, result, model, tokenizer


def eval_items(cfg: RunConfig, set_name: str, ids: list[str]):
    """The evaluated items, loaded as the pipeline loads them (its sample is identified by the saved ids)."""
    groups = list(dict.fromkeys(it.group for it in load_items(cfg.data, split="neur", seed=cfg.seed)))
    if set_name == "Cultural test (BLEnD-style)":
        items = load_items(cfg.data, split="test", seed=cfg.seed)
    elif set_name == "CountryRC test":
        items = load_items(cfg.crc_test, seed=cfg.seed, countries=groups)
    else:
        items = load_items(cfg.general, seed=cfg.seed)
    by_id = {it.id: it for it in items}
    return [by_id[i] for i in ids]


def test_pipeline_inhibited_and_random_conditions_equal_weight_ablated_copies(run):
    cfg, result, model, tokenizer = run
    general = result.general
    assert len(general) > 0
    randoms = [select.random_like(general, model, seed=cfg.seed + i, match="site") for i in range(cfg.n_random)]
    changed = 0
    for set_name, slug in EVAL_SLUGS.items():
        original = EvalResult.load(Path(cfg.out) / "eval" / f"{slug}__original.json")
        items = eval_items(cfg, set_name, [r.id for r in original.records])
        encodings = [encode_choices(it, tokenizer, format="cloze") for it in items]
        plain = evaluate_encoded(model, items, encodings, format="cloze", batch_size=3, progress=False)
        assert_same_records(original, plain)
        for cond, neurons in [("general", general)] + [(f"random{i}", r) for i, r in enumerate(randoms)]:
            saved = EvalResult.load(Path(cfg.out) / "eval" / f"{slug}__{cond}.json")
            want = evaluate_encoded(weight_ablated(model, neurons), items, encodings, format="cloze",
                                    batch_size=3, progress=False)
            assert_same_records(saved, want)
            changed += sum(not np.allclose(a.option_scores, b.option_scores, rtol=1e-4, atol=1e-4)
                           for a, b in zip(want.records, plain.records))
    assert changed > 0  # the ablations change the model's answers' scores, so the comparison has teeth


def test_evaluate_conditions_inhibits_each_set(run):
    cfg, result, model, tokenizer = run
    items = load_items(cfg.data, split="test", seed=cfg.seed)[:6]
    random0 = select.random_like(result.general, model, seed=7, match="site")
    conds = [Condition("original", None), Condition("ours", result.general), Condition("rand", random0)]
    with contextlib.redirect_stdout(io.StringIO()):
        got = evaluate_conditions(model, tokenizer, {"s": items}, conds, fmt="cloze", batch_size=4, progress=False)
    encodings = [encode_choices(it, tokenizer, format="cloze") for it in items]
    assert_same_records(got["s"]["original"], evaluate_encoded(model, items, encodings, format="cloze",
                                                               progress=False))
    for name, neurons in (("ours", result.general), ("rand", random0)):
        want = evaluate_encoded(weight_ablated(model, neurons), items, encodings, format="cloze", progress=False)
        assert_same_records(got["s"][name], want)
    # the hooks are gone afterwards
    assert_same_records(evaluate_encoded(model, items, encodings, format="cloze", progress=False),
                        got["s"]["original"])


def test_report_p_values_equal_a_bootstrap_of_the_saved_records(run):
    cfg, _, _, _ = run
    run_dir = Path(cfg.out)
    results = json.loads((run_dir / "results.json").read_text())
    report = (run_dir / "report.md").read_text()
    assert [r["eval_set"] for r in results["rows"]] == list(EVAL_SLUGS)
    for row in results["rows"]:
        slug = EVAL_SLUGS[row["eval_set"]]
        rec = {c: EvalResult.load(run_dir / "eval" / f"{slug}__{c}.json")
               for c in ("original", "general", "random0", "random1")}
        a = np.array([r.correct for r in rec["general"].records], dtype=float)
        b = np.array([[r.correct for r in rec[f"random{i}"].records] for i in range(2)], dtype=float)
        assert row["p_value"] == pytest.approx(bootstrap_p_less(a, b, 10000, cfg.seed), rel=1e-12)
        assert row["original"] == np.mean([r.correct for r in rec["original"].records])
        assert row["inhibited"] == a.mean() and row["random"] == b.mean(axis=1).tolist()
        p, holm = row["p_value"], row["p_holm"]
        shown, holm_shown = (f"{x:.4f}" if x >= 1e-4 else f"{x:.1e}" for x in (p, holm))
        significant = "yes" if holm < 0.05 else "no"  # the column is decided by the Holm-adjusted p-value
        assert holm >= p
        assert re.search(rf"\| {re.escape(shown)} \| {re.escape(holm_shown)} \| {significant} \|", report)


def test_report_kinship_cells_are_accuracy_drops_of_weight_ablated_copies(run):
    cfg, result, model, tokenizer = run
    run_dir = Path(cfg.out)
    kin = json.loads((run_dir / "results.json").read_text())["kinship"]
    original = EvalResult.load(run_dir / "eval" / f"{EVAL_SLUGS['Cultural test (BLEnD-style)']}__original.json")
    items = eval_items(cfg, "Cultural test (BLEnD-style)", [r.id for r in original.records])
    groups = list(dict.fromkeys(it.group for it in items))
    assert kin["groups"] == groups
    nonempty = [g for g in GROUPS if len(result.specific[g])]
    assert kin["targets"] == nonempty and nonempty
    encodings = [encode_choices(it, tokenizer, format="cloze") for it in items]

    def per_group(records):
        return {g: np.mean([r.correct for r in records if r.group == g]) for g in groups}

    base = per_group(original.records)
    for target, row in zip(kin["targets"], kin["matrix"]):
        ablated = evaluate_encoded(weight_ablated(model, result.specific[target]), items, encodings,
                                   format="cloze", batch_size=4, progress=False)
        acc = per_group(ablated.records)
        want = [base[g] - acc[g] for g in groups]
        assert row == pytest.approx(want, abs=1e-12), target
    report = (run_dir / "report.md").read_text()
    for target, row in zip(kin["targets"], kin["matrix"]):
        assert f"| {target} | " + " | ".join(f"{100 * x:.2f}" for x in row) + " |" in report


def reference_item_maxima(model, items, neurons) -> np.ndarray:
    """[I, K] float64: per item, max over its tokens of a_t * dP(y|x)/da_t of each neuron, by plain autograd
    (unpadded float64 forward per item, activations captured by forward hooks that keep their grad)."""
    model64 = copy.deepcopy(model).to(torch.float64)
    layers = model64.model.layers
    out = np.zeros((len(items), len(neurons)))
    for row, item in enumerate(items):
        captured = {}
        handles = []
        for name in {n.site for n in neurons}:
            parts = name.split(".")
            module = getattr(getattr(layers[int(parts[1])], parts[2]), parts[3])

            def hook(mod, args, output, name=name):
                output.retain_grad()
                captured[name] = output

            handles.append(module.register_forward_hook(hook))
        try:
            targets = list(item.target_ids)
            ids = torch.tensor([list(item.input_ids) + targets[:-1]])
            logp = torch.log_softmax(model64(input_ids=ids).logits[0], dim=-1)
            p = logp[-len(targets):].gather(1, torch.tensor(targets)[:, None]).sum().exp()
            p.backward()
        finally:
            for h in handles:
                h.remove()
        for k, n in enumerate(neurons):
            act = captured[n.site]
            out[row, k] = float((act.detach() * act.grad)[0, :, n.index].max())
    return out


def test_instance_view_shares_equal_a_recomputation(run):
    cfg, result, model, tokenizer = run
    summary = (Path(cfg.out) / "summary.md").read_text()
    rows = [line for line in summary.splitlines() if line.startswith("| layers.")]
    general = result.general
    top = sorted(general, key=lambda n: -n.score)[:15]
    assert len(rows) == len(top) > 0
    neur_items = load_items(cfg.data, split="neur", seed=cfg.seed)
    encoded = as_score_items(encode(neur_items, tokenizer, format="cloze"))
    maxima = reference_item_maxima(model, encoded, top)
    scale = np.abs(maxima).max(axis=0)
    n = len(encoded)
    assert f"Share of the {n} scoring items" in summary
    for k, (line, neuron) in enumerate(zip(rows, top)):
        assert line.startswith(f"| {neuron.site}[{neuron.index}] |")
        shown = float(line.rstrip(" |").rsplit("| ", 1)[1].rstrip("%")) / 100
        # items whose score is within float32 rounding of 0 may fall either way
        eps = 1e-5 * scale[k]
        low = (maxima[:, k] > eps).sum() / n
        high = (maxima[:, k] > -eps).sum() / n
        assert low - 0.0005 <= shown <= high + 0.0005, (neuron, shown, low, high)
    shares_all = (maxima > 0).mean(axis=0)
    assert 0 < shares_all.max()  # some neuron is positive on some item: the check is not vacuous


def test_evaluate_options_reach_the_conditions(monkeypatch, tmp_path, model_dir):
    import culnig_ext.studies.conditions as conditions

    model, _ = load_model(str(model_dir))
    ns = NeuronSet.from_pairs([("layers.0.mlp.gate_proj", 1), ("layers.1.self_attn.q_proj", 2)],
                              model=str(model_dir))
    ns_path = ns.save(tmp_path / "set.json")
    seen = {}

    def fake_conditions(model, tokenizer, sets, conditions, **kw):
        seen.update(sets=sets, conditions=conditions, kw=kw)
        raise KeyError("stop here")

    monkeypatch.setattr(conditions, "evaluate_conditions", fake_conditions)
    argv = ["evaluate", "--model", str(model_dir), "--format", "cloze", "--data", "builtin:cultural", "--split", "test", "--inhibit", str(ns_path), "--random", "2", "--seed", "5",
            "--batch-size", "7", "--no-progress", "--out", str(tmp_path / "ev")]
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert cli.main(argv) == 1
    assert "stop here" in err.getvalue()
    assert list(seen["sets"]) == ["builtin:cultural"]
    assert [it.id for it in seen["sets"]["builtin:cultural"]] == [
        it.id for it in load_items("builtin:cultural", split="test", seed=5)]
    names = [c.name for c in seen["conditions"]]
    assert names == ["original", "inhibited", "random0", "random1"]
    assert seen["conditions"][0].neurons is None and seen["conditions"][1].neurons == ns
    for i in range(2):
        assert seen["conditions"][2 + i].neurons == select.random_like(ns, model, seed=5 + i)
    assert seen["kw"] == {"fmt": "cloze", "batch_size": 7, "progress": False, "save_dir": tmp_path / "ev" / "eval"}


def test_interrupted_writes_keep_old_run_config_and_summary(monkeypatch, tmp_path, model_dir):
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text('{"old": true}\n')
    cfg = RunConfig(out=str(out), model=str(model_dir), format="cloze", progress=False, data="builtin:cultural", crc="builtin:countryrc", crc_test="builtin:countryrc-test")
    _assert_interrupted_write_keeps(monkeypatch, out / "config.json", lambda: run_pipeline(cfg))

    (out / "summary.md").write_text("old summary\n")
    cfg = RunConfig(out=str(out), model=str(model_dir), format="cloze", progress=False, n_random=0,
                    data="builtin:cultural", crc="builtin:countryrc", crc_test="builtin:countryrc-test", 
                    max_test_items=2, kinship=False, general=None, **FRACTIONS)
    with contextlib.redirect_stdout(io.StringIO()):
        _assert_interrupted_write_keeps(monkeypatch, out / "summary.md", lambda: run_pipeline(cfg))
    assert json.loads((out / "config.json").read_text())["max_test_items"] == 2  # the later write went through

