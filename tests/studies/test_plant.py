"""Planting: the layer rule by hand, where a gate neuron's parameters are, and that training changes exactly the
planted entries (every other parameter and entry bit-identical, also when countries share neurons)."""
from __future__ import annotations

import json

import pytest
import torch

from culnig_ext.data.jsonl import read_jsonl
from culnig_ext.data import synthetic
from culnig_ext.models.loading import load_model
from culnig_ext.studies.ground_truth_config import PlantConfig
from culnig_ext.studies.plant import (
    DATA_FILES,
    Encoded,
    Planting,
    check_unchanged,
    choose_neurons,
    entry_bits,
    neuron_params,
    parse_layers,
    plant,
    snapshot,
    train_neurons,
)
from tests.fixtures import tiny_model
from tests.plant_fixtures import TINY, save_tiny_model
from tests.fixtures import one_thread  # noqa: F401  (autouse: one intra-op thread for the tiny models)


GATE = "layers.{}.mlp.gate_proj"


def test_layer_rule_by_hand():
    widths = {GATE.format(i): 10 for i in range(3)}
    p = choose_neurons(widths, ["A", "B"], 3, [0, 1, 2], seed=0)
    # neuron j of country c: layer (c + floor(j * 3 / 3)) mod 3 -> A: 0, 1, 2; B: 1, 2, 0
    assert [s for s, _ in p.neurons["A"]] == [GATE.format(0), GATE.format(1), GATE.format(2)]
    assert [s for s, _ in p.neurons["B"]] == [GATE.format(1), GATE.format(2), GATE.format(0)]
    assert not set(p.neurons["A"]) & set(p.neurons["B"])
    # 16 neurons over a band of 15 layers: floor(j * 15 / 16) = 0, 0, 1, 2, ..., 14
    band = list(range(15, 30))
    p = choose_neurons({GATE.format(i): 64 for i in range(30)}, ["A"], 16, band, seed=0)
    assert [int(s.split(".")[1]) for s, _ in p.neurons["A"]] == [15, 15] + list(range(16, 30))
    assert choose_neurons(widths, ["A", "B"], 3, [0, 1, 2], seed=0).neurons == \
        choose_neurons(widths, ["A", "B"], 3, [0, 1, 2], seed=0).neurons


def test_kinship_shares_neurons():
    widths = {GATE.format(i): 50 for i in range(2)}
    p = choose_neurons(widths, ["A", "B", "C", "D"], 4, [0, 1], kin_pairs=2, kin_share=0.5, seed=3)
    assert len(p.kin) == 2 and all(n == 2 for _, _, n in p.kin)
    overlap = p.overlap()
    for a, b, _ in p.kin:
        assert p.neurons[b][:2] == p.neurons[a][:2] and overlap[a][b] == 2
    kin = {frozenset((a, b)) for a, b, _ in p.kin}
    for a in "ABCD":
        assert overlap[a][a] == 4
        for b in "ABCD":
            if a != b and frozenset((a, b)) not in kin:
                assert overlap[a][b] == 0
    assert len(p.all_neurons()) == 4 * 4 - 2 * 2


@pytest.mark.parametrize("spec, want", [("all", list(range(6))), ("upper", [3, 4, 5]), ("1-2", [1, 2])])
def test_parse_layers(spec, want):
    assert parse_layers(spec, 6) == want


@pytest.mark.parametrize("spec", ["lower", "3-1", "0-6", "x-y"])
def test_parse_layers_refuses(spec):
    with pytest.raises(ValueError, match="--layers"):
        parse_layers(spec, 6)


def test_choose_neurons_refuses():
    with pytest.raises(ValueError, match="no MLP gate site"):
        choose_neurons({GATE.format(0): 4}, ["A"], 2, [0, 1])
    with pytest.raises(ValueError, match="kin_pairs"):
        choose_neurons({GATE.format(0): 40}, ["A", "B"], 2, [0], kin_pairs=2)
    with pytest.raises(ValueError, match="no free gate neuron"):
        choose_neurons({GATE.format(0): 3}, ["A", "B"], 2, [0])


def test_neuron_params_llama_and_phi3():
    model = tiny_model("llama")
    np_ = neuron_params(model, [(GATE.format(1), 5), (GATE.format(1), 7), (GATE.format(0), 2)])
    mlp1 = model.model.layers[1].mlp
    names = set(np_.entries)
    assert names == {f"model.layers.{i}.mlp.{p}.weight" for i in (0, 1) for p in ("gate_proj", "up_proj", "down_proj")}
    param, dim, index = np_.entries["model.layers.1.mlp.down_proj.weight"]
    assert param is mlp1.down_proj.weight and dim == 1 and index.tolist() == [5, 7]
    mask = np_.mask("model.layers.1.mlp.gate_proj.weight")
    assert mask.shape == (48, 1) and mask[:, 0].nonzero().squeeze(1).tolist() == [5, 7]
    phi = tiny_model("phi3")
    entries = neuron_params(phi, [(GATE.format(0), 3)]).entries
    _, dim, rows = entries["model.layers.0.mlp.gate_up_proj.weight"]
    assert dim == 0 and rows.tolist() == [3, 48 + 3]  # gate row i, up row I + i
    with pytest.raises(ValueError, match="only dense MLP gate neurons"):
        neuron_params(model, [("layers.0.self_attn.q_proj", 0)])


def random_examples(countries, n, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        fed = tuple(torch.randint(3, 97, (int(torch.randint(3, 8, (1,), generator=g)),), generator=g).tolist())
        out.append(Encoded(countries[i % len(countries)], fed, tuple(torch.randint(3, 97, (2,), generator=g).tolist())))
    return out


@pytest.mark.parametrize("arch", ["llama", "phi3"])
def test_training_changes_exactly_the_planted_entries_with_shared_neurons(arch):
    model = tiny_model(arch, dtype=torch.float32)
    widths = {GATE.format(i): 48 for i in range(2)}
    planting = choose_neurons(widths, ["A", "B", "C"], 4, [0, 1], kin_pairs=1, kin_share=0.5, seed=1)
    assert len(planting.all_neurons()) == 10  # two shared
    allowed = neuron_params(model, planting.all_neurons())
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    snap = snapshot(model, allowed)
    result = train_neurons(model, random_examples(["A", "B", "C"], 24), planting, lr=0.01, epochs=3, batch_size=4,
                           stop_loss=0.0, seed=0, progress=False)
    assert len(result.epoch_losses) == 3 and len(result.step_losses) == 3 * 6
    check = check_unchanged(model, snap, allowed)
    # independently of check_unchanged: which entries differ, computed here from the copies
    planted_rows = {}
    for site, index in planting.all_neurons():
        planted_rows.setdefault(int(site.split(".")[1]), set()).add(index)
    changed_total = 0
    for name, p in model.named_parameters():
        diff = (entry_bits(p) != entry_bits(before[name]))
        changed_total += int(diff.sum())
        if ".mlp." not in name:
            assert not diff.any(), name
            continue
        layer = int(name.split(".")[2])
        rows = sorted(planted_rows.get(layer, ()))
        if "down_proj" in name:
            outside = diff.clone()
            outside[:, rows] = False
        else:
            keep = rows + ([r + 48 for r in rows] if "gate_up_proj" in name else [])
            outside = diff.clone()
            outside[keep, :] = False
        assert not outside.any(), name
    assert changed_total == check["entries_changed"] > 0
    assert check["entries_changed_outside"] == 0
    # requires_grad as before (all True for a model built from a config), no gradient left behind
    assert all(p.requires_grad and p.grad is None for p in model.parameters())


def test_a_country_writes_only_through_its_own_neurons():
    """Steps of country A only: the down_proj columns (what neurons write) of A's neurons move, B's do not; the
    gate/up rows (when neurons fire) of both A's and B's neurons move, nothing else."""
    model = tiny_model("llama", dtype=torch.float32)
    planting = Planting({"A": [(GATE.format(0), 1), (GATE.format(1), 2)], "B": [(GATE.format(0), 5)]}, [], [0, 1])
    mlp0 = model.model.layers[0].mlp
    gate0, down0 = mlp0.gate_proj.weight.detach().clone(), mlp0.down_proj.weight.detach().clone()
    train_neurons(model, random_examples(["A"], 8), planting, lr=0.1, epochs=2, batch_size=4, stop_loss=0.0, seed=0,
                  progress=False)
    gate_rows = (mlp0.gate_proj.weight.detach() != gate0).any(1).nonzero().squeeze(1).tolist()
    down_cols = (mlp0.down_proj.weight.detach() != down0).any(0).nonzero().squeeze(1).tolist()
    assert gate_rows == [1, 5]
    assert down_cols == [1]


def test_check_unchanged_catches_one_flipped_bit():
    model = tiny_model("llama", dtype=torch.float32)
    allowed = neuron_params(model, [(GATE.format(0), 1)])
    snap = snapshot(model, allowed)
    with torch.no_grad():  # outside the planted row of a trained parameter: one ulp
        w = model.model.layers[0].mlp.gate_proj.weight
        w[2, 0] = torch.nextafter(w[2, 0], torch.tensor(1.0))
    with pytest.raises(RuntimeError, match="1 entries of 'model.layers.0.mlp.gate_proj.weight' outside"):
        check_unchanged(model, snap, allowed)
    model = tiny_model("llama", dtype=torch.float32)
    snap = snapshot(model, allowed)
    with torch.no_grad():  # a parameter holding no planted neuron
        model.model.norm.weight[0] = -model.model.norm.weight[0]
    with pytest.raises(RuntimeError, match="'model.norm.weight', which holds no planted neuron"):
        check_unchanged(model, snap, allowed)


@pytest.fixture(scope="module")
def planted_dir(tmp_path_factory):
    base = save_tiny_model(tmp_path_factory.mktemp("tiny") / "model")
    out = tmp_path_factory.mktemp("planted") / "p"
    result = plant(PlantConfig(out=str(out), model=str(base), lr=0.05, epochs=3, **TINY))
    return base, out, result


def test_plant_writes_model_ground_truth_and_data(planted_dir):
    base, out, result = planted_dir
    gt = json.loads((out / "planted.json").read_text())
    assert gt == json.loads(json.dumps(result.ground_truth))
    assert gt["format"] == "culnig-planted/1" and gt["base_model"] == str(base) and gt["prompt_format"] == "cloze"
    assert len(gt["neurons"]) == 4 and all(len(v) == 4 for v in gt["neurons"].values())
    assert all(s.startswith("layers.") and s.endswith(".mlp.gate_proj") for v in gt["neurons"].values() for s, _ in v)
    assert len(gt["kinship"]) == 1 and gt["kinship"][0]["shared"] == 2
    assert gt["check"]["entries_changed_outside"] == 0 and gt["check"]["untouched_parameters"] == 15
    assert len(gt["training"]["epoch_losses"]) == 3 and gt["layer_rule"]
    for key in ("accuracy_before", "accuracy_after"):
        assert gt[key]["n"] == 4 * 3 * 2 and 0.0 <= gt[key]["accuracy"] <= 1.0
    world = synthetic.World.from_dict(gt["world"])
    for key, name in DATA_FILES.items():
        items = read_jsonl(out / "data" / name)
        assert {it.group for it in items} == set(world.countries), key
    assert not (out.parent / (out.name + ".partial")).exists()


def test_saved_model_differs_from_the_base_only_in_planted_entries(planted_dir):
    base, out, _ = planted_dir
    gt = json.loads((out / "planted.json").read_text())
    planted_model, _ = load_model(str(out / "model"))
    base_model, _ = load_model(str(base))
    rows: dict[int, set[int]] = {}
    for pairs in gt["neurons"].values():
        for site, index in pairs:
            rows.setdefault(int(site.split(".")[1]), set()).add(index)
    base_params = dict(base_model.named_parameters())
    n_changed = 0
    for name, p in planted_model.named_parameters():
        diff = entry_bits(p) != entry_bits(base_params[name])
        n_changed += int(diff.sum())
        if ".mlp." in name:
            layer = int(name.split(".")[2])
            r = sorted(rows.get(layer, ()))
            if "down_proj" in name:
                diff[:, r] = False
            else:
                diff[r, :] = False
        assert not diff.any(), name
    assert n_changed == gt["check"]["entries_changed"]


def test_plant_refuses_bad_options(tmp_path):
    with pytest.raises(ValueError, match=r"--countries must be at least 2 .*got 1"):
        plant(PlantConfig(out=str(tmp_path / "x"), countries=1))
    with pytest.raises(ValueError, match=r"--train-batch-size must be a whole number >= 1, got 0"):
        plant(PlantConfig(out=str(tmp_path / "x"), train_batch_size=0))
    with pytest.raises(ValueError, match=r"--kin-pairs 5: disjoint pairs need 10 countries, --countries is 8"):
        plant(PlantConfig(out=str(tmp_path / "x"), kin_pairs=5))
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is a file, not a folder"):
        plant(PlantConfig(out=str(tmp_path / "file")))
    assert not (tmp_path / "x").exists()


def test_save_model_leaves_a_gguf_quantizer_out(tmp_path):
    """A model loaded from GGUF names its quantizer, which save_pretrained refuses; save_model writes a plain
    float copy that loads back with the same weights, and puts the quantizer back."""
    from transformers.quantizers.quantizer_gguf import GgufHfQuantizer
    from transformers.utils.quantization_config import GgufConfig

    from culnig_ext.studies.plant import save_model
    from tests.plant_fixtures import bpe_tokenizer

    model = tiny_model("llama", dtype=torch.float32)
    quantizer = GgufHfQuantizer(GgufConfig())
    model.hf_quantizer = quantizer
    model.config.quantization_config = GgufConfig()
    with pytest.raises(ValueError, match="not serializable"):
        model.save_pretrained(tmp_path / "refused")
    save_model(model, bpe_tokenizer(), tmp_path / "saved")
    assert model.hf_quantizer is quantizer and "quantization_config" in model.config.__dict__
    assert "quantization_config" not in json.loads((tmp_path / "saved" / "config.json").read_text())
    loaded, _ = load_model(str(tmp_path / "saved"))
    saved = dict(loaded.named_parameters())
    assert all(torch.equal(p, saved[n]) for n, p in model.named_parameters())
