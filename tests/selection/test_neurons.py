"""NeuronSet: ordering, views, set algebra, validation and the JSON file format (hand-built expectations)."""
from __future__ import annotations

import json
import math

import pytest
import torch

from culnig_ext.selection.neurons import FORMAT_VERSION, Neuron, NeuronSet, site_key, site_widths
from culnig_ext.scoring.table import ScoreTable

G0 = "layers.0.mlp.gate_proj"
Q0 = "layers.0.self_attn.q_proj"
K0 = "layers.0.self_attn.k_proj"
V0 = "layers.0.self_attn.v_proj"
G2 = "layers.2.mlp.gate_proj"
V2 = "layers.2.self_attn.v_proj"
G10 = "layers.10.mlp.gate_proj"
Q10 = "layers.10.self_attn.q_proj"


def sample_set(**meta) -> NeuronSet:
    # Deliberately out of order: v before q, layer 10 before layer 2 (numeric, not string, layer order).
    neurons = [
        Neuron(Q10, 3, 0.5),
        Neuron(V0, 1, -2.0),
        Neuron(G10, 7, 1.25),
        Neuron(G0, 5, 3.0),
        Neuron(Q0, 0, 0.1 + 0.2),
        Neuron(G0, 2, 1e-300),
        Neuron(V2, 9, 1e300),
        Neuron(K0, 4, -0.0),
        Neuron(G2, 0, 7.0),
    ]
    return NeuronSet(neurons, **meta)


EXPECTED_ORDER = [(G0, 2), (G0, 5), (Q0, 0), (K0, 4), (V0, 1), (G2, 0), (V2, 9), (G10, 7), (Q10, 3)]


def test_order_is_layer_then_gate_q_k_v_then_index():
    s = sample_set()
    assert s.pairs == EXPECTED_ORDER
    assert [n.site for n in s][:5] == [G0, G0, Q0, K0, V0]
    assert s[0] == Neuron(G0, 2, 1e-300)
    assert len(s) == 9
    assert s.sites == [G0, Q0, K0, V0, G2, V2, G10, Q10]
    assert site_key(G10) == (10, 0) and site_key(V2) == (2, 3) and site_key(Q0) == (0, 1)


def test_membership_and_scores():
    s = sample_set()
    assert (G0, 5) in s
    assert Neuron(G0, 5, 123.0) in s  # membership is by (site, index)
    assert (G0, 6) not in s
    assert (Q0, 5) not in s
    assert s.score(G0, 5) == 3.0
    assert s.score(Q0, 0) == 0.1 + 0.2
    with pytest.raises(KeyError, match="layers.0.mlp.gate_proj"):
        s.score(G0, 6)


def test_by_site_and_counts():
    s = sample_set()
    by_site = s.by_site()
    assert list(by_site) == [G0, Q0, K0, V0, G2, V2, G10, Q10]
    assert by_site[G0].dtype == torch.int64
    assert by_site[G0].tolist() == [2, 5]
    assert by_site[V2].tolist() == [9]
    assert s.counts_by_layer() == {
        (0, "mlp"): 2, (0, "attn"): 3, (2, "mlp"): 1, (2, "attn"): 1, (10, "mlp"): 1, (10, "attn"): 1,
    }
    assert list(s.counts_by_layer()) == [(0, "mlp"), (0, "attn"), (2, "mlp"), (2, "attn"), (10, "mlp"), (10, "attn")]
    assert s.counts_by_kind() == {"mlp": 4, "attn": 5}
    assert NeuronSet([]).counts_by_kind() == {"mlp": 0, "attn": 0}
    assert s.of_kind("mlp").pairs == [(G0, 2), (G0, 5), (G2, 0), (G10, 7)]
    assert s.of_kind("attn").pairs == [(Q0, 0), (K0, 4), (V0, 1), (V2, 9), (Q10, 3)]


def test_from_pairs_and_duplicates():
    s = NeuronSet.from_pairs([(V0, 3), (G0, 1), (G0, 0, 2.5)], method="m", model="x")
    assert s.pairs == [(G0, 0), (G0, 1), (V0, 3)]
    assert s.score(G0, 0) == 2.5 and s.score(G0, 1) == 0.0
    assert s.method == "m" and s.model == "x" and s.params == {} and s.sources == {}
    with pytest.raises(ValueError, match=r"duplicate neuron \('layers.0.mlp.gate_proj', 1\)"):
        NeuronSet.from_pairs([(G0, 1), (V0, 3), (G0, 1, 9.0)])
    with pytest.raises(ValueError, match="pair 1"):
        NeuronSet.from_pairs([(G0, 1), (G0,)])


@pytest.mark.parametrize(
    "neuron, message",
    [
        (Neuron("layers.0.mlp.up_proj", 1, 0.0), "not a site name"),
        (Neuron(G0, -1, 0.0), "non-negative int"),
        (Neuron(G0, 1.0, 0.0), "non-negative int"),
        (Neuron(G0, True, 0.0), "non-negative int"),
        (Neuron(G0, 1, float("nan")), "finite number"),
        (Neuron(G0, 1, "1"), "finite number"),
    ],
)
def test_bad_neurons_refused(neuron, message):
    with pytest.raises(ValueError, match=message):
        NeuronSet([Neuron(Q0, 0, 0.0), neuron])


def test_bad_metadata_refused():
    with pytest.raises(ValueError, match="params"):
        NeuronSet([], params={"x": object()})
    with pytest.raises(ValueError, match="params"):
        NeuronSet([], params={"x": float("inf")})
    with pytest.raises(ValueError, match="sources"):
        NeuronSet([], sources={"neur": 3})
    with pytest.raises(ValueError, match="method"):
        NeuronSet([], method=None)


def test_set_algebra_by_site_and_index():
    a = NeuronSet([Neuron(G0, 1, 1.0), Neuron(G0, 2, 2.0), Neuron(Q0, 3, 3.0)], method="general", model="m",
                  sources={"neur": "aa"})
    b = NeuronSet([Neuron(G0, 2, -5.0), Neuron(V0, 0, 4.0)], method="random", model="m", sources={"neur": "bb"})
    u = a.union(b)
    assert u.pairs == [(G0, 1), (G0, 2), (Q0, 3), (V0, 0)]
    assert [n.score for n in u] == [1.0, 2.0, 3.0, 4.0]  # shared neuron keeps the left score
    assert u.method == "union" and u.model == "m"
    assert u.sources == {"left.neur": "aa", "right.neur": "bb"}
    assert u.params["left"]["method"] == "general" and u.params["right"]["method"] == "random"
    i = a.intersection(b)
    assert i.pairs == [(G0, 2)] and i.score(G0, 2) == 2.0
    d = a.difference(b)
    assert d.pairs == [(G0, 1), (Q0, 3)]
    assert b.difference(a).pairs == [(V0, 0)]
    assert b.intersection(a).score(G0, 2) == -5.0
    other_model = NeuronSet([Neuron(G0, 1)], model="other")
    with pytest.raises(ValueError, match="different models"):
        a.union(other_model)


def test_validate_against_dict_table_and_model():
    s = NeuronSet.from_pairs([(G0, 47), (Q0, 31), (K0, 15), (V0, 0)])
    widths = {G0: 48, Q0: 32, K0: 16, V0: 16}
    assert s.validate(widths) is s
    with pytest.raises(ValueError, match=r"site 'layers.0.self_attn.k_proj'.*index 15.*width 15"):
        s.validate({**widths, K0: 15})
    with pytest.raises(ValueError, match="layers.0.self_attn.v_proj"):
        s.validate({G0: 48, Q0: 32, K0: 16})
    table = ScoreTable(["A"], [1], {site: torch.zeros(1, w, dtype=torch.float64) for site, w in widths.items()})
    assert s.validate(table) is s
    small = ScoreTable(["A"], [1], {G0: torch.zeros(1, 40, dtype=torch.float64), Q0: torch.zeros(1, 32),
                                    K0: torch.zeros(1, 16), V0: torch.zeros(1, 16)})
    with pytest.raises(ValueError, match=r"'layers.0.mlp.gate_proj'.*index 47.*width 40"):
        s.validate(small)
    from tests.fixtures import tiny_model

    model = tiny_model("llama")  # 2 layers, intermediate 48, q 32, k/v 16 (4 heads of 8, 2 kv heads)
    assert site_widths(model) == {
        G0: 48, Q0: 32, K0: 16, V0: 16,
        "layers.1.mlp.gate_proj": 48, "layers.1.self_attn.q_proj": 32,
        "layers.1.self_attn.k_proj": 16, "layers.1.self_attn.v_proj": 16,
    }
    assert s.validate(model) is s
    with pytest.raises(ValueError, match="layers.2.mlp.gate_proj"):
        NeuronSet.from_pairs([(G2, 0)]).validate(model)
    with pytest.raises(ValueError, match="width of site"):
        s.validate({G0: -1})
    with pytest.raises(TypeError, match="widths must be"):
        s.validate([48, 32])


# --------------------------------------------------------------------------------------------------- I/O
META = dict(method="general", params={"t_mlp": 0.01, "normalize": "count", "control": True},
            model="HuggingFaceTB/SmolLM2-135M-Instruct", sources={"neur": "0123abcd", "ctrl": "ffee0011"})


def test_save_load_round_trip(tmp_path):
    s = sample_set(**META)
    path = tmp_path / "sub" / "neurons.json"
    assert s.save(path) == path
    loaded = NeuronSet.load(path)
    assert loaded == s
    assert loaded.pairs == EXPECTED_ORDER
    assert [n.score for n in loaded] == [n.score for n in s]  # exact float round trip
    assert loaded.score(V2, 9) == 1e300 and loaded.score(G0, 2) == 1e-300
    assert loaded.params == META["params"] and loaded.sources == META["sources"] and loaded.model == META["model"]
    raw = json.loads(path.read_text())
    assert raw["format"] == FORMAT_VERSION == "culnig-neurons/1"
    assert list(raw) == ["format", "method", "params", "model", "sources", "neurons"]
    assert raw["neurons"][0] == {"site": G0, "index": 2, "score": 1e-300}
    assert len(raw["neurons"]) == 9
    # Overwrite in place, no temp file left behind.
    NeuronSet([], **META).save(path)
    assert NeuronSet.load(path) == NeuronSet([], **META)
    assert sorted(p.name for p in path.parent.iterdir()) == ["neurons.json"]


def test_save_failure_keeps_old_file(tmp_path, monkeypatch):
    path = tmp_path / "n.json"
    sample_set(**META).save(path)
    before = path.read_bytes()
    import culnig_ext._utils.atomic as atomic

    def boom(tmp):
        tmp.write_text("partial")
        raise OSError("disk full")

    monkeypatch.setattr("culnig_ext.selection.neurons.atomic_write_text", lambda p, text: atomic.atomic_write(p, boom))
    with pytest.raises(OSError, match="disk full"):
        NeuronSet([]).save(path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["n.json"]


def _write(tmp_path, obj, name="bad.json"):
    path = tmp_path / name
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj))
    return path


def _good():
    return sample_set(**META).to_json()


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda o: o.pop("neurons"), r"missing field\(s\) \['neurons'\]"),
        (lambda o: o.pop("sources"), r"missing field\(s\) \['sources'\]"),
        (lambda o: o.update(extra=1), r"unknown field\(s\) \['extra'\]"),
        (lambda o: o.update(format="culnig-neurons/0"), "field 'format'"),
        (lambda o: o.update(method=3), "field 'method'"),
        (lambda o: o.update(model=None), "field 'model'"),
        (lambda o: o.update(params=[1]), "field 'params'"),
        (lambda o: o.update(sources={"neur": 1}), "field 'sources'"),
        (lambda o: o.update(neurons={"a": 1}), "field 'neurons' must be a list"),
        (lambda o: o["neurons"].__setitem__(3, [1, 2]), r"neurons\[3\]: expected an object"),
        (lambda o: o["neurons"][4].pop("score"), r"neurons\[4\]: keys must be .*missing \['score'\]"),
        (lambda o: o["neurons"][4].update(layer=1), r"neurons\[4\]: keys must be .*unknown \['layer'\]"),
        (lambda o: o["neurons"][2].update(site="layers.0.mlp.down_proj"), r"neurons\[2\]: not a site name"),
        (lambda o: o["neurons"][2].update(site=7), r"neurons\[2\]: field 'site'"),
        (lambda o: o["neurons"][5].update(index=-3), r"neurons\[5\]: index must be a non-negative int"),
        (lambda o: o["neurons"][5].update(index=2.0), r"neurons\[5\]: index must be"),
        (lambda o: o["neurons"][5].update(index="2"), r"neurons\[5\]: index must be"),
        (lambda o: o["neurons"][6].update(score="high"), r"neurons\[6\]: score must be a finite number"),
        (lambda o: o["neurons"][6].update(score=None), r"neurons\[6\]: score must be"),
        (lambda o: o["neurons"].append(dict(o["neurons"][1], score=9.0)),
         r"neurons\[9\]: duplicate neuron \('layers.0.mlp.gate_proj', 5\), first at neurons\[1\]"),
    ],
)
def test_load_errors_name_file_and_field(tmp_path, mutate, message):
    obj = _good()
    mutate(obj)
    path = _write(tmp_path, obj)
    with pytest.raises(ValueError, match=message) as info:
        NeuronSet.load(path)
    assert str(path) in str(info.value)


def test_load_errors_non_json_and_missing_file(tmp_path):
    path = _write(tmp_path, '{"format": "culnig-neurons/1",\n "method": }')
    with pytest.raises(ValueError, match=r"bad.json: not valid JSON \(line 2"):
        NeuronSet.load(path)
    nan_path = _write(tmp_path, json.dumps(_good()).replace('"score": 0.5', '"score": NaN'), "nan.json")
    with pytest.raises(ValueError, match=r"nan.json: neurons\[8\]: score must be a finite number, got nan"):
        NeuronSet.load(nan_path)
    top_list = _write(tmp_path, "[1, 2]", "list.json")
    with pytest.raises(ValueError, match="list.json: expected a JSON object"):
        NeuronSet.load(top_list)
    with pytest.raises(FileNotFoundError, match="nope.json"):
        NeuronSet.load(tmp_path / "nope.json")
    assert math.isfinite(NeuronSet.load(_write(tmp_path, _good(), "ok.json")).score(Q10, 3))
