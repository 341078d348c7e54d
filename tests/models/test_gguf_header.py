"""GGUF tensor shapes from the header alone, against files written by the ``gguf`` package's own writer (with
metadata of every kind before the tensor table, string arrays included) and shapes written out by hand."""
from __future__ import annotations

import gguf  # pinned in requirements.txt (the embedded models are GGUF files)
import numpy as np
import pytest

from culnig_ext.models.gguf_header import GGUFHeaderError, site_widths, tensor_shapes

HIDDEN, FFN, Q, KV = 8, 12, 8, 4


def write_gguf(path, tensors: dict[str, tuple[int, ...]]) -> None:
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(2)
    writer.add_string("general.name", "tiny test model")
    writer.add_array("tokenizer.ggml.tokens", ["<s>", "</s>", "hello", "wörld"] * 50)
    writer.add_array("tokenizer.ggml.scores", [0.5] * 200)
    writer.add_uint32("llama.context_length", 128)
    writer.add_float32("llama.rope.freq_base", 10000.0)
    writer.add_bool("general.flag", True)
    for name, shape in tensors.items():
        writer.add_tensor(name, np.zeros(shape, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def llama_tensors(layers: int = 2) -> dict[str, tuple[int, ...]]:
    tensors = {"token_embd.weight": (32, HIDDEN)}
    for i in range(layers):
        tensors.update({f"blk.{i}.attn_q.weight": (Q, HIDDEN), f"blk.{i}.attn_k.weight": (KV, HIDDEN),
                        f"blk.{i}.attn_v.weight": (KV, HIDDEN), f"blk.{i}.ffn_gate.weight": (FFN, HIDDEN),
                        f"blk.{i}.ffn_up.weight": (FFN, HIDDEN), f"blk.{i}.ffn_down.weight": (HIDDEN, FFN),
                        f"blk.{i}.attn_norm.weight": (HIDDEN,)})
    return tensors


def test_shapes_and_sites(tmp_path):
    path = tmp_path / "m.gguf"
    tensors = llama_tensors()
    write_gguf(path, tensors)
    assert tensor_shapes(path) == tensors
    assert site_widths(path) == {
        "layers.0.mlp.gate_proj": FFN, "layers.0.self_attn.q_proj": Q, "layers.0.self_attn.k_proj": KV,
        "layers.0.self_attn.v_proj": KV,
        "layers.1.mlp.gate_proj": FFN, "layers.1.self_attn.q_proj": Q, "layers.1.self_attn.k_proj": KV,
        "layers.1.self_attn.v_proj": KV,
    }


def test_fused_projections_give_no_layout(tmp_path):
    path = tmp_path / "fused.gguf"
    tensors = {name: shape for name, shape in llama_tensors().items() if "attn_q" not in name and "attn_k" not in name
               and "attn_v" not in name}
    tensors.update({"blk.0.attn_qkv.weight": (Q + 2 * KV, HIDDEN), "blk.1.attn_qkv.weight": (Q + 2 * KV, HIDDEN)})
    write_gguf(path, tensors)
    assert site_widths(path) is None


def test_truncated_header_is_named(tmp_path):
    path = tmp_path / "m.gguf"
    write_gguf(path, llama_tensors())
    data = path.read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(data[:200])  # inside the metadata
    with pytest.raises(GGUFHeaderError, match=f"{cut}: GGUF header cut short or malformed"):
        tensor_shapes(cut)
    other = tmp_path / "v1.gguf"
    other.write_bytes(b"GGUF" + (1).to_bytes(4, "little") + bytes(16))
    with pytest.raises(GGUFHeaderError, match="GGUF version 1 is not supported"):
        tensor_shapes(other)
