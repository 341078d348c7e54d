"""Tiny random decoder LMs of every supported family, built offline from configs, and random items: the shared
fixtures of the tests (gated families first, then gate-less MLPs, mixtures of experts and Gemma 2)."""
from __future__ import annotations

import pytest
import torch
import transformers
from transformers import (
    Gemma3TextConfig,
    LlamaConfig,
    Phi3Config,
    Qwen3Config,
)

VOCAB = 97
ARCHS = ("llama", "qwen3", "gemma3", "phi3")


def tiny_config(arch: str):
    common = dict(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    if arch == "llama":
        return LlamaConfig(**common)
    if arch == "qwen3":
        return Qwen3Config(**common, head_dim=8)
    if arch == "gemma3":
        return Gemma3TextConfig(**common, head_dim=8, sliding_window=4, query_pre_attn_scalar=8)
    if arch == "phi3":
        return Phi3Config(**common)
    raise ValueError(arch)


def tiny_model(arch: str, dtype: torch.dtype = torch.float64, seed: int = 0):
    """A randomly initialised causal LM (weights drawn with a fixed seed, scaled up so attributions are not tiny)."""
    torch.manual_seed(seed)
    config = tiny_config(arch)
    config._attn_implementation = "sdpa"
    model = transformers.AutoModelForCausalLM.from_config(config)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.3)
    return model.to(dtype).eval()


def random_items(n: int, *, seed: int = 0, groups=("A", "B", "C"), multi_token: bool = False, min_len=2, max_len=9):
    """Items with mixed prompt lengths and (optionally) 1-3 target tokens, ids avoiding the special tokens."""
    g = torch.Generator().manual_seed(seed)
    items = []
    for i in range(n):
        length = int(torch.randint(min_len, max_len + 1, (1,), generator=g))
        ids = torch.randint(3, VOCAB, (length,), generator=g).tolist()
        n_targets = int(torch.randint(1, 4, (1,), generator=g)) if multi_token else 1
        targets = torch.randint(3, VOCAB, (n_targets,), generator=g).tolist()
        item = {"id": f"it{i}", "input_ids": ids, "group": groups[i % len(groups)]}
        if multi_token:
            item["target_ids"] = targets
        else:
            item["answer_id"] = targets[0]
        items.append(item)
    return items


# --------------------------------------------------------------------------------------------- families beyond the gated four
GATELESS = ("gpt2", "gpt_neox", "opt", "falcon", "falcon_mq", "falcon_classic", "phi")
MOE = ("mixtral", "qwen2_moe", "qwen3_moe", "olmoe")
FAMILIES = GATELESS + MOE + ("gemma2",)


def family_config(arch: str):
    special = dict(pad_token_id=0, bos_token_id=1, eos_token_id=2)
    common = dict(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=128, **special,
    )
    if arch == "gpt2":
        return transformers.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_inner=48, n_positions=128,
                                       **special)
    if arch == "gpt_neox":
        return transformers.GPTNeoXConfig(**common, rotary_pct=0.5)
    if arch == "opt":
        return transformers.OPTConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, ffn_dim=48,
                                      num_attention_heads=4, max_position_embeddings=128, word_embed_proj_dim=32,
                                      **special)
    if arch == "falcon":  # Falcon-40B/180B layout: per kv group [q .. q | k | v]
        return transformers.FalconConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                         num_kv_heads=2, new_decoder_architecture=True, **special)
    if arch == "falcon_mq":  # Falcon-7B layout: multi-query [q | k | v]
        return transformers.FalconConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                         multi_query=True, new_decoder_architecture=False, parallel_attn=True,
                                         **special)
    if arch == "falcon_classic":  # Falcon-RW layout: per head [q_h | k_h | v_h]
        return transformers.FalconConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                         multi_query=False, new_decoder_architecture=False, parallel_attn=False,
                                         **special)
    if arch == "phi":
        return transformers.PhiConfig(**common, partial_rotary_factor=0.5)
    moe = dict(common, num_key_value_heads=2, num_experts_per_tok=2)
    if arch == "mixtral":
        return transformers.MixtralConfig(**moe, num_local_experts=4)
    if arch == "qwen2_moe":  # layer 1 dense (mlp_only_layers), layer 0 with experts + shared expert
        return transformers.Qwen2MoeConfig(**moe, num_experts=4, moe_intermediate_size=24,
                                           shared_expert_intermediate_size=40, mlp_only_layers=[1])
    if arch == "qwen3_moe":
        return transformers.Qwen3MoeConfig(**moe, num_experts=4, moe_intermediate_size=24, head_dim=8)
    if arch == "olmoe":
        return transformers.OlmoeConfig(**moe, num_experts=4)
    if arch == "gemma2":
        return transformers.Gemma2Config(**common, num_key_value_heads=2, head_dim=8, sliding_window=4,
                                         query_pre_attn_scalar=8, attn_logit_softcapping=5.0,
                                         final_logit_softcapping=8.0)
    raise ValueError(arch)


def family_model(arch: str, dtype: torch.dtype = torch.float64, seed: int = 0):
    """A randomly initialised causal LM (weights N(0, 0.3) so attributions are not tiny; norms left at 1)."""
    torch.manual_seed(seed)
    config = family_config(arch)
    # sdpa as load_model does; Gemma 2 eager, as load_model does for attention soft-capping. Experts: the plain
    # loop (the default grouped_mm kernel refuses float64); the scorer replaces it with its own loop anyway.
    config._attn_implementation = "eager" if arch == "gemma2" else "sdpa"
    config._experts_implementation = "eager"
    model = transformers.AutoModelForCausalLM.from_config(config)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.3)
    return model.to(dtype).eval()


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread while a module's tests run (import it into a test module to apply it there): the tiny
    models are faster single-threaded, and very slow with threads on a busy 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def save_random_llama(path, tokenizer, *, hidden: int, intermediate: int, layers: int, heads: int, kv_heads: int,
                      max_positions: int = 256, seed: int = 0):
    """A random tiny Llama for ``tokenizer`` (weights N(0, 0.1): larger than the default init, so that scores and
    accuracies vary), saved with the tokenizer into the folder ``path``, which is returned."""
    config = transformers.LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=max_positions,
        pad_token_id=0, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(config)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.1)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
