"""The measuring half of scripts/gpu_check.sh: the fused op's bandwidth and the scorer's cost on a GPU, as one
Markdown table (OUT/gpu_check.md, plus OUT/gpu_check.json).

    python benchmarks/gpu_check.py --out OUT [--smoke] [--build STATUS] [--tests STATUS]

Measures, in one process:
  op       bench_ops at B=16, T=2048, N=14336 (Llama-3-8B's MLP width) in bfloat16 and float32: GB/s of the fused
           op (bytes of the counted tokens it reads) against torch reading the same inputs once
           (act.sum(); grad.sum()).                                         target: >= 70% in bfloat16
  scoring  a Llama-3-8B-shaped model with random bfloat16 weights built on the GPU (no download), a batch of
           prompts: tokens/s of culnig_ext.score against a bare frozen forward+backward and a forward only
           (bench_scoring's variants a and e), with and without activation checkpointing; the fused op's share
           of the step's GPU time (torch.profiler); peak memory.   targets: score <= 1.05x bare; op < 2% of step
--smoke runs the same code end to end on the CPU with small shapes (the test suite does, so it never rots); its
figures mean nothing.
"""
from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import bench_ops  # noqa: E402
import bench_scoring  # noqa: E402
import culnig_ext  # noqa: E402
from culnig_ext.kernels import ops  # noqa: E402


def llama8b_config(smoke: bool):
    from transformers import LlamaConfig

    if smoke:
        return LlamaConfig(vocab_size=1000, hidden_size=64, intermediate_size=224, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)
    return LlamaConfig(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                       num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=8192,
                       rope_theta=500000.0)


def build_model(device: str, smoke: bool):
    from transformers import AutoModelForCausalLM

    config = llama8b_config(smoke)
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    dtype = torch.float32 if smoke else torch.bfloat16
    with torch.device(device):  # initialised where it runs: no 16 GB on the host
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model.eval()


def make_items(vocab: int, batch: int, length: int):
    g = torch.Generator().manual_seed(0)
    items = []
    for i in range(batch):
        n = length - int(torch.randint(0, length // 4 + 1, (1,), generator=g))  # up to 25% padding
        items.append({"id": f"i{i}", "input_ids": torch.randint(10, vocab, (n,), generator=g).tolist(),
                      "answer_id": int(torch.randint(10, vocab, (1,), generator=g)), "group": f"g{i % 4}"})
    return items


def timed(fn, device: str, reps: int) -> float:
    times = []
    for _ in range(reps):
        bench_scoring.sync(device)
        t0 = time.perf_counter()
        fn()
        bench_scoring.sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def peak_bytes(fn, device: str) -> int | None:
    if not device.startswith("cuda"):
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated()


def op_share(fn, device: str) -> float:
    """Share of the step's kernel time (CPU: op self time) spent in the culnig ops, by torch.profiler."""
    from torch.profiler import ProfilerActivity, profile

    cuda = device.startswith("cuda")
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        fn()
        bench_scoring.sync(device)
    total = ours = 0.0
    for e in prof.key_averages():
        if cuda:
            t = getattr(e, "self_device_time_total", None)
            if t is None:
                t = e.self_cuda_time_total
            if e.device_type != torch.autograd.DeviceType.CUDA:
                continue
        else:
            t = e.self_cpu_time_total
        total += t
        if "culnig" in e.key:
            ours += t
    return ours / total if total > 0 else float("nan")


def scoring(device: str, smoke: bool, reps: int) -> dict:
    model = build_model(device, smoke)
    batch, length = (2, 32) if smoke else (8, 1024)
    items = make_items(model.config.vocab_size, batch, length)
    tokens = sum(len(it["input_ids"]) for it in items)
    runs = {
        "bare": lambda: bench_scoring.run_a(model, items, device),
        "score": lambda: culnig_ext.score(model, items, batch_size=batch, progress=False),
        "score_ckpt": lambda: culnig_ext.score(model, items, batch_size=batch, progress=False,
                                               checkpoint_activations=True),
        "forward": lambda: bench_scoring.run_e(model, items, device),
    }
    for fn in runs.values():  # warm-up
        fn()
    out = {"tokens": tokens, "batch": batch, "length": length,
           "model": "Llama-3-8B shape, random bfloat16" if not smoke else "tiny Llama (smoke), float32"}
    order = list(runs)
    times = {name: [] for name in order}
    for _ in range(reps):  # interleaved: load hits all variants alike
        for name in order:
            times[name].append(timed(runs[name], device, 1))
    for name in order:
        out[f"{name}_s"] = statistics.median(times[name])
        out[f"{name}_tok_s"] = tokens / out[f"{name}_s"]
        out[f"{name}_peak"] = peak_bytes(runs[name], device)
    out["op_share"] = op_share(runs["score"], device)
    out["op_share_ckpt"] = op_share(runs["score_ckpt"], device)
    return out


def fmt_gb(x) -> str:
    return "-" if x is None else f"{x / 1e9:.2f} GB"


def table(env: dict, op_rows: list[dict], sc: dict | None, build: str, tests: str) -> str:
    lines = [f"GPU check, {env['when']}: {env['device']}; torch {env['torch']} (CUDA {env['cuda']}); "
             f"culnig op backend {env['backend']}{'; SMOKE RUN on small shapes: the figures mean nothing' if env['smoke'] else ''}",
             "", "| check | measured | target | met |", "|---|---|---|---|",
             f"| build of the extension | {build} | builds, CUDA kernels registered | "
             f"{'yes' if build.startswith('ok') else 'no'} |",
             f"| tests/kernels/test_ops_cuda.py (ops + GPU scorer) | {tests} | all pass | "
             f"{'yes' if ' passed' in tests and 'failed' not in tests and 'error' not in tests else 'no'} |"]
    for r in op_rows:
        ratio = r["fused_gbs"] / r["read_once_gbs"]
        target = ">= 70% of read-once" if r["dtype"] == "bfloat16" else "(reported)"
        met = ("yes" if ratio >= 0.7 else "no") if r["dtype"] == "bfloat16" else "-"
        lines.append(f"| fused op {r['dtype']} B={r['B']} T={r['T']} N={r['N']} | {r['fused_gbs']:.1f} GB/s "
                     f"({r['fused_ms']:.3f} ms) vs read-once {r['read_once_gbs']:.1f} GB/s ({r['read_once_ms']:.3f} ms)"
                     f" = {ratio:.1%} | {target} | {met} |")
    if sc is not None:
        ratio = sc["score_s"] / sc["bare_s"]
        lines += [
            f"| scoring model | {sc['model']}, batch {sc['batch']} x <= {sc['length']} tokens ({sc['tokens']} real) "
            f"| | |",
            f"| score() time / bare frozen fwd+bwd | {ratio:.3f} ({sc['score_tok_s']:,.0f} vs "
            f"{sc['bare_tok_s']:,.0f} tokens/s) | <= 1.05 | {'yes' if ratio <= 1.05 else 'no'} |",
            f"| fused op share of the step | {sc['op_share']:.2%} | < 2% | "
            f"{'yes' if sc['op_share'] < 0.02 else 'no'} |",
            f"| forward only | {sc['forward_tok_s']:,.0f} tokens/s; score / forward = "
            f"{sc['score_s'] / sc['forward_s']:.3f} | (reported) | - |",
            f"| score() with activation checkpointing | {sc['score_ckpt_tok_s']:,.0f} tokens/s "
            f"({sc['score_ckpt_s'] / sc['bare_s']:.3f}x bare); op share {sc['op_share_ckpt']:.2%} | (reported) | - |",
            f"| peak memory: bare / score / score+ckpt / forward | {fmt_gb(sc['bare_peak'])} / {fmt_gb(sc['score_peak'])}"
            f" / {fmt_gb(sc['score_ckpt_peak'])} / {fmt_gb(sc['forward_peak'])} | (reported) | - |",
        ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="folder for gpu_check.md and gpu_check.json")
    parser.add_argument("--smoke", action="store_true", help="CPU, small shapes: checks the script, measures nothing")
    parser.add_argument("--build", default="not run", help="build status line from gpu_check.sh")
    parser.add_argument("--tests", default="not run", help="test summary line from gpu_check.sh")
    args = parser.parse_args(argv)
    device = "cpu" if args.smoke else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA device (use --smoke for the CPU dry run)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    env = {"when": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
           "device": torch.cuda.get_device_name() if device == "cuda" else f"CPU ({ops.cpu_capability()} kernel)",
           "torch": torch.__version__, "cuda": torch.version.cuda, "backend": ops.backend(device),
           "smoke": args.smoke}
    shape = ["2", "64", "520"] if args.smoke else ["16", "2048", "14336"]
    op_argv = ["--device", device, "--shape", *shape, "--dtypes", "bfloat16", "float32", "--reps",
               "2" if args.smoke else "10"]
    if args.smoke:
        op_argv += ["--capability", ops.cpu_capability()]
    op_rows = bench_ops.main(op_argv)
    sc = scoring(device, args.smoke, reps=1 if args.smoke else 3)
    text = table(env, op_rows, sc, args.build, args.tests)
    (out / "gpu_check.md").write_text(text)
    (out / "gpu_check.json").write_text(json.dumps({"env": env, "op": op_rows, "scoring": sc, "build": args.build,
                                                    "tests": args.tests}, indent=1))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
