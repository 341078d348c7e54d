"""Tiny random decoder LMs of each supported architecture, built offline from configs (shared by the tests)."""
from __future__ import annotations

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
