"""Fine-tuning picked blocks (culnig_ext.studies.finetune.train) and the module study (finetune_study, ``culnig finetune``) on
tiny random Llamas with a word-level tokenizer and a toy chat template.

References written here: the first optimizer step against a float64 per-item (unpadded) loss with torch's own
AdamW; frozen parameters compared bit for bit with clones taken before training; LoRA adapters found by walking
the PEFT model; the study's numbers recomputed from its saved per-item records.
"""
from __future__ import annotations

import copy
import json

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedTokenizerFast

from culnig_ext.cli import main as cli
from culnig_ext.data import load_items
from culnig_ext.data.tasks import QNLI_PROMPT, encode_task, load_task, task_prompt
from culnig_ext.intervention.evaluate import EvalResult
from culnig_ext.studies.finetune.train import finetune
from culnig_ext.studies.finetune.blocks import decoder_param_count, pick_modules, rank_modules, target_modules
from culnig_ext.selection.neurons import NeuronSet
from culnig_ext.studies.pipeline import RunConfig, run_pipeline
from culnig_ext.stats.bootstrap import paired_bootstrap
from tests.fixtures import one_thread  # noqa: F401  (autouse: one intra-op thread for the tiny models)

CHAT = ("{% for m in messages %}<s> user : {{ m['content'] }} </s>{% endfor %}"
        "{% if add_generation_prompt %}<s> assistant :{% endif %}")


def word_tokenizer(chat: bool = True) -> PreTrainedTokenizerFast:
    """One token per word of the builtin data, the task prompts and the toy chat template."""
    texts = ["Question: Answer: user assistant 0 1", QNLI_PROMPT]
    for split in ("train", "test"):
        texts += [it.question for it in load_task("builtin:qnli", split)]
    for source in ("builtin:cultural", "builtin:general", "builtin:countryrc", "builtin:countryrc-test"):
        for item in load_items(source, max_per_question=None):
            texts += [item.question, *item.choices]
    pre = pre_tokenizers.Whitespace()
    words = sorted({w for text in texts for w, _ in pre.pre_tokenize_str(text)})
    vocab = {t: i for i, t in enumerate(["<pad>", "<s>", "</s>", "<unk>"] + words)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                  unk_token="<unk>")
    if chat:
        tok.chat_template = CHAT
    return tok


TOK = word_tokenizer()


def tiny(dtype=torch.float64, seed: int = 0, layers: int = 4):
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(TOK), hidden_size=32, intermediate_size=48, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2, pad_token_id=0, bos_token_id=1,
                         eos_token_id=2, tie_word_embeddings=False)
    config._attn_implementation = "sdpa"
    return AutoModelForCausalLM.from_config(config).to(dtype).eval()


NEURONS = NeuronSet.from_pairs([("layers.1.mlp.gate_proj", i) for i in range(5)]
                               + [("layers.0.self_attn.q_proj", 0), ("layers.0.self_attn.k_proj", 1)]
                               + [("layers.2.mlp.gate_proj", 7)], method="general")


def top_pick(model, budget=0.3, end="top", seed=0):
    return pick_modules(rank_modules(model, NEURONS), budget, end, seed, total_params=decoder_param_count(model))


def clones(model):
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def test_task_items_and_encoding():
    train, test = load_task("builtin:qnli", "train"), load_task("builtin:qnli", "test")
    assert (len(train), len(test)) == (72, 48)
    assert not {it.id for it in train} & {it.id for it in test}
    item = train[0]
    assert item.choices == ("0", "1") and item.answer_idx == 0  # the sentence answers the question: entailment = 0
    assert item.question.startswith("Determine whether the following context sentence")
    assert "Question: What gas do plants take in for photosynthesis?\nContext: Plants take in" in item.question
    text, special = task_prompt(item, TOK)
    assert text == f"<s> user : {item.question} </s><s> assistant :" and special is False
    enc = encode_task(item, TOK)
    assert enc.prompt_ids == tuple(TOK(text, add_special_tokens=False)["input_ids"])
    assert enc.letter_ids == (TOK.convert_tokens_to_ids("0"), TOK.convert_tokens_to_ids("1"))
    assert task_prompt(item, word_tokenizer(chat=False)) == (item.question, True)


def test_task_sources_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown task source 'sst2'"):
        load_task("sst2")
    with pytest.raises(ValueError, match="task split must be one of"):
        load_task("builtin:qnli", "validation")
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_task(f"qnli:{tmp_path / 'missing.jsonl'}")
    bad = tmp_path / "mrpc.jsonl"
    bad.write_text('{"idx": 0, "sentence1": "a b", "sentence2": "a c", "label": 1}\n'
                   '{"idx": 1, "sentence1": "a b", "sentence2": "a c", "label": -1}\n')
    with pytest.raises(ValueError, match=r"mrpc.jsonl, line 2: field 'label': expected 0 or 1"):
        load_task(f"mrpc:{bad}")
    good = tmp_path / "mrpc_ok.jsonl"
    good.write_text('{"idx": 7, "sentence1": "He left.", "sentence2": "He went away.", "label": 1}\n')
    (item,) = load_task(f"mrpc:{good}")
    assert item.id == "mrpc:7" and item.answer_idx == 1
    assert "Sentence 1: He left.\nSentence 2: He went away.\nRespond with:" in item.question


def test_first_step_matches_float64_reference():
    """One optimizer step over a window holding every item: the loss equals the mean target NLL of unpadded
    per-item forwards, and the weights equal one step of torch's AdamW (weight decay 0) after clipping at 1.0."""
    items = load_task("builtin:qnli", "train")[:12]
    model = tiny()
    ref = copy.deepcopy(model)
    pick = top_pick(model)
    result = finetune(model, TOK, items, pick, lr=1e-2, batch_size=5, grad_accum=3, max_steps=1, progress=False)
    assert result.steps == 1 and result.items_seen == 12

    picked = [m for name, m in ref.named_modules() if name in set(target_modules(pick))]
    params = [p for m in picked for p in m.parameters()]
    ref.train()
    total = torch.zeros((), dtype=torch.float64)
    for item in items:
        text, _ = task_prompt(item, TOK)
        prompt = TOK(text, add_special_tokens=False)["input_ids"]
        target = TOK(item.answer, add_special_tokens=False)["input_ids"]
        ids = torch.tensor([prompt + target])
        logp = ref(input_ids=ids).logits[0, len(prompt) - 1].log_softmax(-1)
        total = total - logp[target[0]]
    loss = total / len(items)
    assert result.losses[0] == pytest.approx(loss.item(), rel=1e-10)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    torch.optim.AdamW(params, lr=1e-2, weight_decay=0.0).step()
    for (name, p), (_, q) in zip(model.named_parameters(), ref.named_parameters()):
        torch.testing.assert_close(p, q.detach(), rtol=1e-9, atol=1e-12, msg=name)


@pytest.mark.parametrize("lora", [False, True])
def test_frozen_parameters_bit_identical(lora):
    items = load_task("builtin:qnli", "train")[:16]
    model = tiny(torch.float32)
    before = clones(model)
    pick = top_pick(model)
    result = finetune(model, TOK, items, pick, lora=lora, lr=1e-2, batch_size=4, grad_accum=1, max_steps=3,
                      progress=False)
    assert result.steps == 3
    picked_weights = {f"{name}.weight" for name in target_modules(pick)}
    assert {n for n, _ in model.named_parameters()} == set(before)  # LoRA merged away: same parameters
    for name, p in model.named_parameters():
        if name in picked_weights:
            assert not torch.equal(p, before[name]), name
        else:
            assert torch.equal(p, before[name]), name
    assert all(p.requires_grad for p in model.parameters())  # flags restored (from_config: all trainable)
    assert not any("lora" in name for name, _ in model.named_modules())


def test_lora_adapters_on_exactly_the_picked_modules():
    items = load_task("builtin:qnli", "train")[:8]
    model = tiny(torch.float32)
    for end in ("top", "bottom"):
        pick = top_pick(model, end=end)
        result = finetune(model, TOK, items, pick, lora=True, lr=1e-3, batch_size=4, grad_accum=2, max_steps=1,
                          progress=False)
        expected = {f"model.layers.{b.layer}.{'mlp' if b.kind == 'mlp' else 'self_attn'}.{p}" for b in pick
                    for p in (("gate_proj", "up_proj", "down_proj") if b.kind == "mlp"
                              else ("q_proj", "k_proj", "v_proj", "o_proj"))}
        assert set(result.trained_modules) == expected and len(result.trained_modules) == len(expected)
        # r=32 adapters: A [32, in], B [out, 32] per module.
        shapes = {n: tuple(m.weight.shape) for n, m in model.named_modules() if n in expected}
        assert result.trainable_params == sum(32 * (i + o) for o, i in shapes.values())
        assert result.mode == "lora" and result.settings["lora_r"] == 32 and result.settings["lora_alpha"] == 64


def test_reproducible_with_a_seed():
    items = load_task("builtin:qnli", "train")[:24]
    runs = []
    for seed in (3, 3, 4):
        model = tiny(torch.float32)
        result = finetune(model, TOK, items, top_pick(model), lr=1e-2, batch_size=4, grad_accum=2, max_steps=3,
                          seed=seed, progress=False)
        runs.append((result.losses, clones(model)))
    assert runs[0][0] == runs[1][0]
    assert all(torch.equal(runs[0][1][n], runs[1][1][n]) for n in runs[0][1])
    assert runs[0][0][0] != runs[2][0][0]  # another seed, another data order
    lora = []
    for _ in range(2):
        model = tiny(torch.float32)
        finetune(model, TOK, items, top_pick(model), lora=True, lr=1e-2, batch_size=4, grad_accum=2, max_steps=2,
                 seed=5, progress=False)
        lora.append(clones(model))
    assert all(torch.equal(lora[0][n], lora[1][n]) for n in lora[0])


def test_finetune_bad_input():
    items = load_task("builtin:qnli", "train")[:4]
    model = tiny(torch.float32)
    other = tiny(torch.float32, layers=2)
    pick = top_pick(model)
    with pytest.raises(ValueError, match="is not an nn.Linear of this model"):
        finetune(other, TOK, items, [b for b in top_pick(model, 0.99) if b.layer == 3], progress=False)
    with pytest.raises(ValueError, match="lr must be a positive number"):
        finetune(model, TOK, items, pick, lr=0.0, progress=False)
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        finetune(model, TOK, items, pick, batch_size=0, progress=False)
    with pytest.raises(ValueError, match="no training items"):
        finetune(model, TOK, [], pick, progress=False)


# ---------------------------------------------------------------------------------------- the study, CLI
def test_culnig_finetune_cli_on_tiny_model(tmp_path, capsys):
    model = tiny(torch.float32)
    model_dir = tmp_path / "model"
    model.save_pretrained(model_dir)
    TOK.save_pretrained(model_dir)
    NEURONS.save(tmp_path / "general.json")
    out = tmp_path / "ft"
    args = ["finetune", "--model", str(model_dir), "--neurons", str(tmp_path / "general.json"), "--format", "cloze",
            "--budget", "0.3", "--max-steps", "2", "--grad-accum", "2", "--lr", "1e-2", "--max-test-items", "6",
            "--max-train-items", "16", "--no-progress", "--out", str(out)]
    assert cli.main(args) == 0
    printed = capsys.readouterr().out
    assert printed.strip().endswith(f"wrote {out / 'finetune.md'}")
    res = json.loads((out / "finetune_results.json").read_text())
    assert [e["end"] for e in res["ends"]] == ["top", "bottom", "random"]
    assert res["metadata"]["ends done"] == "3 of 3"
    assert res["eval_sets"] == ["Cultural test (BLEnD-style)", "CountryRC test", "General knowledge"]
    assert res["target"]["n_train"] == 16 and res["target"]["n_items"] == 6 and res["target"]["format"] == "letter"
    top = res["ends"][0]
    assert [b["name"] for b in top["pick"]["blocks"]] == ["layers.1.mlp", "layers.0.self_attn"]
    assert top["layers"] == {"mlp": [0, 1, 0, 0], "attn": [1, 0, 0, 0]}
    assert all(b["count"] == 0 for b in res["ends"][1]["pick"]["blocks"])
    for end in res["ends"]:
        assert end["train"]["steps"] == 2 and end["pick"]["share"] <= 0.3
    # Gains and drops recomputed from the saved per-item records.
    before_t = EvalResult.load(out / "eval" / "before__target.json")
    assert res["target"]["before"] == before_t.accuracy
    for end in res["ends"]:
        after_t = EvalResult.load(out / "eval" / f"{end['end']}__target.json")
        assert end["target_after"] == after_t.accuracy
        gain = paired_bootstrap(after_t.correct, before_t.correct, seed=0, alternative="greater")
        assert end["target_gain"]["diff"] == pytest.approx(after_t.correct.mean() - before_t.correct.mean())
        assert end["target_gain"] == gain.to_dict()
        for name, slug in zip(res["eval_sets"], ["cultural_test__blend-style", "countryrc_test", "general_knowledge"]):
            b = EvalResult.load(out / "eval" / f"before__{slug}.json")
            a = EvalResult.load(out / "eval" / f"{end['end']}__{slug}.json")
            assert end["drops"][name]["diff"] == pytest.approx(b.correct.mean() - a.correct.mean())
            assert end["after"][name] == a.accuracy
    report = (out / "finetune.md").read_text()
    assert "| top | 1 / 1 |" in report and (out / "finetune_layers.png").stat().st_size > 0
    assert json.loads((out / "ranking.json").read_text())["decoder_params"] == decoder_param_count(model)
    # The model on disk was the start of every end: "before" equals a fresh evaluation of it.
    fresh = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    from culnig_ext.intervention.evaluate import evaluate_encoded

    items = [it for it in load_task("builtin:qnli", "test") if it.id in {r.id for r in before_t.records}]
    again = evaluate_encoded(fresh, items, [encode_task(it, TOK) for it in items], format="letter",
                             restrict_to_choices=True, progress=False)
    assert again.correct.tolist() == before_t.correct.tolist()


def test_culnig_finetune_cli_errors(tmp_path, capsys):
    NEURONS.save(tmp_path / "general.json")
    base = ["finetune", "--neurons", str(tmp_path / "general.json"), "--out", str(tmp_path / "o"), "--no-progress"]
    assert cli.main([*base, "--task", "qnli:" + str(tmp_path / "q.jsonl")]) == 1
    assert "is a local file, which is one split: give the test file with --task-test" in capsys.readouterr().err
    assert cli.main([*base, "--task", "sst2"]) == 1
    assert "unknown task source 'sst2'" in capsys.readouterr().err
    assert cli.main([*base, "--neurons", str(tmp_path / "none.json")]) == 1
    assert "neuron file not found" in capsys.readouterr().err
    assert cli.main([*base, "--budget", "1.5"]) == 1
    assert "--budget must be a share of the decoder's parameters in (0, 1], got 1.5" in capsys.readouterr().err
    assert cli.main([*base, "--lr", "0"]) == 1
    assert "--lr must be a positive number, got 0.0" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    # culnig run --finetune refuses a bad study before it loads the model or writes anything.
    run = ["run", "--out", str(tmp_path / "r"), "--no-progress", "--finetune"]
    assert cli.main([*run, "--finetune-budget", "0"]) == 1
    assert "--budget must be a share" in capsys.readouterr().err
    assert cli.main([*run, "--finetune-task", "mrpc:" + str(tmp_path / "m.jsonl")]) == 1
    assert "is a local file, which is one split" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_culnig_run_finetune_step(tmp_path):
    """``run_pipeline`` with a study: it ranks the run's own culture-general neurons and reuses the pipeline's
    un-inhibited evaluations as "before"."""
    model = tiny(torch.float32)
    with torch.no_grad():  # larger weights than the default init, so that scores vary
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.1)
    model.save_pretrained(tmp_path / "model")
    TOK.save_pretrained(tmp_path / "model")
    cfg = RunConfig(out=str(tmp_path / "run"), model=str(tmp_path / "model"), format="cloze", n_random=1,
                    max_test_items=6, progress=False, kinship=False, instance_view=False, t_mlp=0.1, t_attn=0.05,
                    r_mlp=0.02, r_attn=0.02, finetune=True, finetune_budget=0.3, finetune_max_steps=1,
                    finetune_end="top,bottom", finetune_max_train_items=8)
    out = run_pipeline(cfg)
    assert "finetune" in out.timings
    res = json.loads((tmp_path / "run" / "finetune" / "finetune_results.json").read_text())
    general = NeuronSet.load(tmp_path / "run" / "neurons" / "general.json")
    assert res["n_neurons"] == len(general) > 0
    expected = pick_modules(rank_modules(model, general), 0.3, "top", 0, total_params=decoder_param_count(model))
    assert [b["name"] for b in res["ends"][0]["pick"]["blocks"]] == expected.names
    report = json.loads((tmp_path / "run" / "results.json").read_text())
    assert res["before"] == {row["eval_set"]: row["original"] for row in report["rows"]}
    assert [e["end"] for e in res["ends"]] == ["top", "bottom"] and res["target"]["n_train"] == 8
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["finetune"] is True and config["finetune_budget"] == 0.3
    assert config["finetune_end"] == "top,bottom" and config["finetune_max_steps"] == 1


FINETUNE_OPTIONS = ["--end", "--budget", "--by", "--task", "--task-test", "--lora", "--epochs", "--lr",
                    "--train-batch-size", "--grad-accum", "--max-steps", "--max-train-items"]


@pytest.mark.parametrize("command", ["finetune", "run"])
def test_help_lists_the_study_options(command, capsys):
    import re

    with pytest.raises(SystemExit) as info:
        cli.main([command, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    prefix = "--" if command == "finetune" else "--finetune-"
    options = [prefix + o[2:] for o in FINETUNE_OPTIONS]
    if command == "finetune":
        options += ["--neurons", "--model", "--format", "--data", "--crc-test", "--general", "--max-test-items",
                    "--seed", "--out"]
    else:
        options += ["--finetune"]
    for option in options:
        assert re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", out), f"{option} not in help of {command}"
