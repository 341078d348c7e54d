"""The scaling options of the command line: ``culnig run`` forwards them to the pipeline, ``--shard``/``--device-map``
are checked before any model is loaded, ``--sites`` accepts kinds and names."""
from __future__ import annotations

import pytest

from culnig_ext.cli import main as cli
from culnig_ext.studies import pipeline
from culnig_ext.models.loading import parse_device_map
from culnig_ext.models.sites import site_names
from tests.fixtures import tiny_model


def test_run_forwards_the_scaling_options(monkeypatch, tmp_path):
    seen = {}

    def fake_run(cfg):
        seen["cfg"] = cfg
        raise ValueError("stop here")

    monkeypatch.setattr(pipeline, "run_pipeline", fake_run)
    argv = ["run", "--out", str(tmp_path / "r"), "--device-map", '{"": "cpu"}', "--attn-implementation", "eager",
            "--no-checkpoint", "--checkpoint-every", "7"]
    assert cli.main(argv) == 1
    cfg = seen["cfg"]
    assert (cfg.device_map, cfg.attn_implementation, cfg.checkpoint, cfg.checkpoint_every) == ('{"": "cpu"}', "eager",
                                                                                              False, 7)
    assert parse_device_map(cfg.device_map) == {"": "cpu"}  # what run_pipeline hands to load_model
    assert cli.main(argv[:3] + ["--out", str(tmp_path / "r")]) == 1
    assert seen["cfg"].checkpoint is True and seen["cfg"].checkpoint_every == 20  # the defaults


@pytest.mark.parametrize("option, value, message", [
    ("--shard", "2/2", "need 0 <= K < N"),
    ("--shard", "1-2", "K/N with integers"),
    ("--device-map", "{cpu", "'auto' or a JSON object"),
])
def test_bad_scaling_options_are_refused_before_loading(option, value, message, capsys, tmp_path):
    argv = ["score", "--model", str(tmp_path / "no-such-model"), "--data", "builtin:cultural", "--out",
            str(tmp_path / "o.safetensors"), option, value]
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert message in err and "no-such-model" not in err  # refused before the model is looked for


def test_sites_spec_accepts_kinds_and_names():
    model = tiny_model("llama")
    assert site_names(model, None) is None and site_names(model, "all") is None
    assert site_names(model, "mlp") == ["layers.0.mlp.gate_proj", "layers.1.mlp.gate_proj"]
    assert site_names(model, "layers.1.self_attn.k_proj, mlp") == ["layers.1.self_attn.k_proj",
                                                                  "layers.0.mlp.gate_proj", "layers.1.mlp.gate_proj"]
    with pytest.raises(ValueError, match="not a site name"):
        site_names(model, "layers.x")
