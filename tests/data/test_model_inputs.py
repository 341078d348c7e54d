"""``culnig prompts``: each item's exact model input (after the chat template) and target, for our letter and cloze
formats and the paper's protocol; expectations written here from the templates."""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import random

import pytest
from transformers import LlamaConfig

from culnig_ext.cli import main as cli
from culnig_ext.data import load_items
from tests.data.test_protocols import CRC_V0, CRC_V0_RAW, PAPER_NAMES, byte_tokenizer

INSTR = ('Without any explanation, choose only one from the given alphabet choices(e.g., A, B, C). '
         'Provide as JSON format: {"answer_choice":""}')


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tok")
    LlamaConfig(vocab_size=259, hidden_size=16, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2,
                num_key_value_heads=1).save_pretrained(path)
    byte_tokenizer().save_pretrained(path)
    return path


def run(*argv):
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = cli.main(list(argv))
    assert code == 0, buf.getvalue()
    return buf.getvalue()


def read(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_prompts_ours_letter_and_cloze(model_dir, tmp_path):
    out = tmp_path / "p.jsonl"
    printed = run("prompts", "--data", "builtin:cultural", "--split", "test", "--model", str(model_dir), "--out", str(out))
    items = load_items("builtin:cultural", split="test")
    recs = read(out)
    assert len(recs) == len(items) and "protocol ours" in printed
    it, rec = items[0], recs[0]
    options = "".join(f"{'ABCDEFG'[i]}. {c}\n" for i, c in enumerate(it.choices))
    user = f"{it.question} {INSTR}\n\n{options}\nAnswer:"
    assert rec["input"] == f"<|user|>{user}\n<|assistant|>" + '{"answer_choice":"'
    assert rec["target"] == "ABCDEFG"[it.answer_idx] and rec["id"] == it.id and rec["group"] == it.group
    assert rec["n_input_tokens"] == len(rec["input"].encode())  # byte tokenizer
    run("prompts", "--data", "builtin:cultural", "--format", "cloze", "--model", str(model_dir), "--out", str(out))
    rec = read(out)[0]
    first = load_items("builtin:cultural")[0]
    assert rec["input"] == f"Question: {first.question}\nAnswer:"
    assert rec["target"] == " " + first.choices[first.answer_idx]


def test_prompts_paper_countryrc(model_dir, tmp_path):
    out = tmp_path / "crc.jsonl"
    run("prompts", "--data", "builtin:countryrc", "--protocol", "paper", "--split", "neur", "--model", str(model_dir),
        "--out", str(out))
    recs = read(out)
    assert len(recs) == 8 * 4 * 15
    tmpl = json.loads((__import__("culnig_ext.data.builtin", fromlist=["x"]).COUNTRYRC_PATH).read_text())[0]
    rec = next(r for r in recs if r["id"] == "paper-countryrc:0:Iran:v0")
    rng = random.Random(int(hashlib.md5(f"{tmpl['context']}_{tmpl['question']}_{CRC_V0_RAW}_Iran".encode())
                            .hexdigest()[:8], 16) % 2 ** 32)
    opts = rng.sample([c for c in PAPER_NAMES if c != "Iran"], 3) + ["Iran"]
    rng.shuffle(opts)
    passage = tmpl["context"].replace("{country}", "Iran")
    user = CRC_V0.format(passage=passage, question=tmpl["question"], a=opts[0], b=opts[1], c=opts[2], d=opts[3])
    assert rec["input"] == f"<|user|>{user}\n<|assistant|>"
    assert rec["target"] == "ABCD"[opts.index("Iran")] and rec["variant"] == 0 and rec["system"] is None
    assert {r["target"] for r in recs if r["variant"] == 3} <= set("1234")


def test_prompts_paper_refuses_cloze(model_dir, tmp_path, capsys):
    assert cli.main(["prompts", "--data", "builtin:countryrc", "--protocol", "paper", "--format", "cloze",
                     "--model", str(model_dir), "--out", str(tmp_path / "x.jsonl")]) == 1
    assert "--format cloze does not apply" in capsys.readouterr().err
    assert not (tmp_path / "x.jsonl").exists()
