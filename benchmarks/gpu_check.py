"""The one unattended GPU check of the culnig ops and scorer (run by scripts/gpu_check.sh; see docs/development.md).

    python benchmarks/gpu_check.py --out OUT [--smoke] [--deadline-at EPOCH_SECONDS | --deadline SECONDS]

Written for a machine where a command may run at most 600 s and only the files under OUT come back: one overall
deadline (default 480 s from the start), every step bounded by what remains of it, and every section in its own
try block that rewrites OUT/gpu_check.json and OUT/gpu_check.md (atomically: temporary file + rename) as soon as it
ends, so an exception, a SystemExit, a timeout or a kill in one section loses at most that section. A section that
would start with less than its minimum time left is recorded as "skipped: deadline".

Sections, in order (the JIT build first: every later step loads the library it leaves in the cache):
  environment   GPU(s), driver, torch, CUDA, Python (no kernels loaded)
  jit_build     ``python -m culnig_ext.kernels.build`` in a subprocess (timed; the cache later steps load)
  cuda_tests    pytest of the test files that carry the ``cuda`` marker (``-m cuda``)
  op            the fused op at the gate / q / k-v widths (N = 14336, 4096, 1024; B=16, T=2048) in bfloat16 and
                float32: fused vs the reference (product in float32: torch.equal, max |diff|) and vs plain PyTorch
                (product in the input dtype: max |diff|), times, GB/s and % of a read-once pass measured in the
                same run on the same tensors
  large         one input of more than 2^31 elements per tensor, generated on the device, fused vs reference (in a
                child process: a kernel fault there cannot poison the CUDA context of the later sections)
  scoring_llama culnig_ext.score vs a bare frozen forward+backward (and a forward, and score with activation
  scoring_qwen  checkpointing) on a random-weight Llama-3-8B-shaped / Qwen2-7B-shaped model over >= 4 timed
                batches (one more before them as warm-up): tokens/s, op share of the step (torch.profiler), peak
                memory
  distributed   a 2-rank torchrun of score() on two GPUs vs one process (only when >= 2 GPUs exist)
  aot_build     the ahead-of-time build (CULNIG_AOT=1 setup.py build_ext into a temporary folder, timed)

--smoke runs the same code paths on the CPU with tiny shapes (the test suite does, so the script never rots);
its figures mean nothing. --sections a,b (or GPU_CHECK_SECTIONS) runs only those. GPU_CHECK_FAIL=section[:exit|:hang],...
makes sections fail on purpose (RuntimeError; SystemExit with ":exit"; with ":hang" it sleeps until the deadline
stops it; "large.child" fails inside the child process of that section), to check that the others are still written
and that the deadline holds.
Exit status: 0 when every section is ok (or skipped for a reason other than the deadline), 1 otherwise.
"""
from __future__ import annotations

import argparse
import datetime
import gc
import json
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(HERE))

# Nothing here imports culnig_ext.kernels.ops at module level: importing it loads (and, with no cached build,
# compiles) the extension in this process, which must come after the timed, bounded jit_build step.


class DeadlineExceeded(Exception):
    """The overall deadline passed while a section was running (SIGALRM)."""


class ChildFailed(Exception):
    """A section run in a child process (:func:`in_child`) failed there; the message is the child's error."""


class Stopped(Exception):
    """The process got SIGTERM (the wrapping `timeout`): record what is done and stop."""


# --------------------------------------------------------------------------------------------------- output files
def write_atomic(path: Path, text: str) -> None:
    """Write text to path through a temporary file in the same folder and a rename: a reader (or a kill) never
    sees a half-written file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _cell(x) -> str:
    return str(x).replace("|", "/").replace("\n", " ")


def render_md(report: dict) -> str:
    """The human-readable gpu_check.md of a (possibly partial) report."""
    meta = report["meta"]
    lines = [f"# GPU check, {meta['started']}", ""]
    if meta["smoke"]:
        lines += ["SMOKE RUN on the CPU with tiny shapes: the figures mean nothing.", ""]
    lines += [f"Deadline {meta['deadline_s']:.0f} s; {meta['elapsed_s']:.1f} s used when this was written"
              f"{' (finished)' if meta.get('finished') else ' (still running or stopped)'}.", "",
              "| section | status | seconds | result |", "|---|---|---|---|"]
    for name, sec in report["sections"].items():
        summary = sec.get("error") if sec["status"] == "failed" else sec.get("summary", "")
        lines.append(f"| {name} | {sec['status']} | {sec.get('seconds', 0):.1f} | {_cell(summary or '')} |")
    for name, sec in report["sections"].items():
        detail = (sec.get("result") or {}).get("table")
        if detail:
            lines += ["", f"## {name}", "", *detail]
    failed = [(n, s) for n, s in report["sections"].items() if s["status"] == "failed"]
    if failed:
        lines += ["", "## failures", ""]
        for name, sec in failed:
            lines += [f"### {name}", "", f"{sec['error']}", "", "```", sec.get("traceback", "").rstrip()[-3000:], "```"]
    return "\n".join(lines) + "\n"


class Report:
    """The sections' records, rewritten to OUT/gpu_check.json and OUT/gpu_check.md after every section."""

    def __init__(self, out: Path, smoke: bool, deadline_at: float, start: float) -> None:
        self.out, self.start, self.deadline_at = out, start, deadline_at
        self.data = {"meta": {"started": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
                              "smoke": smoke, "deadline_s": deadline_at - start, "elapsed_s": 0.0, "finished": False},
                     "sections": {}}

    def record(self, name: str, entry: dict) -> None:
        """Store one section's entry and rewrite both files."""
        self.data["sections"][name] = entry
        self.write()

    def write(self) -> None:
        """Rewrite gpu_check.json and gpu_check.md from what is recorded now."""
        self.data["meta"]["elapsed_s"] = time.time() - self.start
        write_atomic(self.out / "gpu_check.json", json.dumps(self.data, indent=1, default=str))
        write_atomic(self.out / "gpu_check.md", render_md(self.data))


# ------------------------------------------------------------------------------------------------------ helpers
class Ctx:
    """What the sections share: options, the deadline, the folder for logs."""

    def __init__(self, out: Path, smoke: bool, deadline_at: float) -> None:
        self.out, self.smoke, self.deadline_at = out, smoke, deadline_at
        self.device = "cpu" if smoke else "cuda"
        self.py = sys.executable
        self.jit_ok = False

    def remaining(self) -> float:
        """Seconds left before the overall deadline."""
        return self.deadline_at - time.time()


def run_bounded(ctx: Ctx, name: str, cmd: list[str], env: dict | None = None, cwd: Path | None = None,
                reserve: float = 3.0) -> dict:
    """Run cmd under coreutils `timeout` with what remains of the deadline (less ``reserve`` s to write the
    results); its output goes to OUT/<name>.log. Returns rc, seconds, the log's tail and whether it timed out."""
    bound = int(ctx.remaining() - reserve)
    if bound < 1:
        raise DeadlineExceeded(f"no time left to start {name}")
    log = ctx.out / f"{name}.log"
    t0 = time.time()
    with open(log, "w") as f:
        f.write(f"$ {' '.join(cmd)}   (timeout {bound} s)\n")
        f.flush()
        if shutil.which("timeout"):
            rc = subprocess.run(["timeout", "--kill-after=5", str(bound), *cmd], stdout=f, stderr=subprocess.STDOUT,
                                env=env, cwd=str(cwd or REPO)).returncode
        else:  # no coreutils timeout: Python's (kills the child at the bound)
            try:
                rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=str(cwd or REPO),
                                    timeout=bound).returncode
            except subprocess.TimeoutExpired:
                rc = 124
    text = log.read_text(errors="replace")
    return {"rc": rc, "seconds": time.time() - t0, "timed_out": rc in (124, 137), "bound_s": bound,
            "tail": text[-2000:], "log": log.name}


def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def forced_failure(name: str) -> None:
    """Fail on purpose when GPU_CHECK_FAIL names this section (``name`` -> RuntimeError, ``name:exit`` ->
    SystemExit, ``name:hang`` -> sleeps until the deadline stops it), so a test can check that the other
    sections are still written and that the deadline bounds a section."""
    for spec in filter(None, os.environ.get("GPU_CHECK_FAIL", "").split(",")):
        section, _, how = spec.partition(":")
        if section == name:
            if how == "exit":
                raise SystemExit(f"forced SystemExit in {name} (GPU_CHECK_FAIL)")
            if how == "hang":
                while True:
                    time.sleep(1)
            raise RuntimeError(f"forced failure in {name} (GPU_CHECK_FAIL)")


# ----------------------------------------------------------------------------------------------------- sections
def sec_environment(ctx: Ctx) -> dict:
    import torch

    out = {"python": platform.python_version(), "torch": torch.__version__, "torch_cuda": torch.version.cuda,
           "cuda_available": torch.cuda.is_available(), "gpus": [], "cpu_count": os.cpu_count(),
           "host": platform.node()}
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            out["gpus"].append({"name": p.name, "capability": f"{p.major}.{p.minor}",
                                "memory_gib": round(p.total_memory / 2**30, 1)})
    if shutil.which("nvidia-smi"):
        r = run_bounded(ctx, "nvidia_smi", ["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                                            "--format=csv,noheader"])
        lines = [ln for ln in r["tail"].splitlines()[1:] if ln.strip()]
        out["nvidia_smi"] = lines
        out["driver"] = lines[0].split(",")[1].strip() if lines and "," in lines[0] else "unknown"
    from torch.utils import cpp_extension

    nvcc = os.path.join(cpp_extension.CUDA_HOME or "", "bin", "nvcc")
    if os.path.isfile(nvcc):
        r = run_bounded(ctx, "nvcc", [nvcc, "--version"])
        out["nvcc"] = r["tail"].strip().splitlines()[-1]
    gpus = ", ".join(f"{g['name']} (sm {g['capability']}, {g['memory_gib']} GiB)" for g in out["gpus"]) or "no GPU"
    out["summary"] = (f"{gpus}; driver {out.get('driver', '-')}; torch {out['torch']} (CUDA {out['torch_cuda']}); "
                      f"nvcc {out.get('nvcc', '-')}; Python {out['python']}")
    if not ctx.smoke and not out["gpus"]:
        raise RuntimeError(f"no CUDA device ({out['summary']}); use --smoke for the CPU dry run")
    return out


def sec_jit_build(ctx: Ctx) -> dict:
    env = dict(os.environ, MAX_JOBS=os.environ.get("MAX_JOBS", str(os.cpu_count() or 1)))
    r = run_bounded(ctx, "jit_build", [ctx.py, "-m", "culnig_ext.kernels.build"], env=env)
    cuda = "CUDA kernels: yes" in r["tail"]
    if r["rc"] != 0:
        why = f"timed out after {r['bound_s']} s" if r["timed_out"] else f"exit {r['rc']}"
        raise RuntimeError(f"the JIT build failed ({why}; see {r['log']}): {r['tail'][-500:]}")
    if not ctx.smoke and not cuda:
        raise RuntimeError(f"the JIT build has no CUDA kernels (see {r['log']}): {r['tail'][-500:]}")
    ctx.jit_ok = True
    return {"seconds": r["seconds"], "cuda_kernels": cuda,
            "summary": f"built or found in {r['seconds']:.1f} s; CUDA kernels: {'yes' if cuda else 'no'}"}


def cuda_test_files() -> list[str]:
    """The test files that carry the ``cuda`` marker."""
    return sorted(str(p.relative_to(REPO)) for p in (REPO / "tests").rglob("test_*.py")
                  if "mark.cuda" in p.read_text(errors="replace"))


def sec_cuda_tests(ctx: Ctx) -> dict:
    files = cuda_test_files()
    if not files:
        raise RuntimeError("no test file carries the cuda marker")
    r = run_bounded(ctx, "cuda_tests", [ctx.py, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "cuda", *files])
    lines = [ln.strip("= ") for ln in r["tail"].splitlines() if any(w in ln for w in ("passed", "failed", "skipped",
                                                                                        "error", "deselected"))]
    summary = lines[-1] if lines else f"no summary (exit {r['rc']})"
    if r["timed_out"]:
        raise RuntimeError(f"the CUDA tests timed out after {r['bound_s']} s (see {r['log']}); last: {summary}")
    if r["rc"] not in (0, 5):
        raise RuntimeError(f"the CUDA tests failed: {summary} (see {r['log']})")
    return {"files": files, "rc": r["rc"], "seconds": r["seconds"], "summary": f"{summary} ({', '.join(files)})"}


def _ops(ctx: Ctx):
    """culnig_ext.kernels.ops, loaded after the JIT build (the reference ops if that build failed)."""
    if not ctx.jit_ok and "culnig_ext.kernels.ops" not in sys.modules:
        os.environ["CULNIG_FORCE_REFERENCE"] = "1"  # no second, unbounded build in this process
    from culnig_ext.kernels import ops

    return ops


def _need_fused(ctx: Ctx):
    ops = _ops(ctx)
    if ops.backend(ctx.device) == "reference":
        raise RuntimeError(f"the fused kernels are not loaded for {ctx.device} ({ops.LOAD.detail}); nothing to measure")
    return ops


def _inputs(B: int, T: int, N: int, dtype, device: str, seed: int):
    """act, grad [B, T, N] generated on the device; a left-padded mask (~20% of the tokens masked); weights,
    4 groups, a float64 accumulator."""
    import torch

    gen = torch.Generator(device=device).manual_seed(seed)
    act = torch.randn(B, T, N, generator=gen, device=device, dtype=dtype)
    grad = torch.randn(B, T, N, generator=gen, device=device, dtype=dtype)
    cpu_gen = torch.Generator().manual_seed(seed)
    pads = torch.randint(0, int(0.4 * T) + 1, (B,), generator=cpu_gen).clamp(max=T - 1)
    mask = (torch.arange(T)[None, :] >= pads[:, None]).to(device)
    weight = torch.rand(B, generator=cpu_gen).to(device)
    group = torch.randint(0, 4, (B,), generator=cpu_gen).to(device)
    return act, grad, mask, weight, group


def _compare(ops, act, grad, mask, weight, group) -> dict:
    """Fused vs the reference (product in float32) and vs plain PyTorch (product in the input dtype)."""
    import torch
    from culnig_ext.kernels import reference

    index, count = ops.token_list(mask)
    fused = torch.ops.culnig.max_attribution(act, grad, mask, index, count)
    ref = reference.max_attribution(act, grad, mask)
    plain = (act * grad).masked_fill(~mask[..., None], float("-inf")).amax(1).float()
    acc_f = torch.zeros(4, act.shape[2], dtype=torch.float64, device=act.device)
    acc_r = acc_f.clone()
    torch.ops.culnig.max_attribution_accumulate_(acc_f, act, grad, mask, weight, group, None, index, count)
    reference.max_attribution_accumulate_(acc_r, act, grad, mask, weight, group)
    out = {"equal_reference": bool(torch.equal(fused, ref)),
           "max_diff_reference": float((fused - ref).abs().max()),
           "max_diff_plain": float((fused - plain).abs().max()),
           "accumulate_equal_reference": bool(torch.equal(acc_f, acc_r)),
           "accumulate_max_diff_reference": float((acc_f - acc_r).abs().max())}
    del fused, ref, plain
    return out


def sec_op(ctx: Ctx) -> dict:
    ops = _need_fused(ctx)  # before bench_ops, which imports the ops
    import torch
    import bench_ops

    if ctx.smoke:
        B, T, widths, reps = 2, 64, {"gate": 224, "q": 64, "k/v": 32}, 2
    else:
        B, T, widths, reps = 16, 2048, {"gate": 14336, "q": 4096, "k/v": 1024}, 10
    dev = torch.device(ctx.device)
    rows, table = [], ["| dtype | site | B x T x N | fused ms | plain ms | read-once ms | fused GB/s | read-once GB/s |"
                       " % of read-once | fused == reference | max diff ref / plain | accumulate == ref (max diff) |",
                       "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for dtype in (torch.bfloat16, torch.float32):
        for site, N in widths.items():
            act, grad, mask, weight, group = _inputs(B, T, N, dtype, ctx.device, seed=N)
            index, count = ops.token_list(mask)
            acc = torch.zeros(4, N, dtype=torch.float64, device=dev)

            def fused():
                torch.ops.culnig.max_attribution_accumulate_(acc, act, grad, mask, weight, group, None, index, count)

            def plain():
                m = (act * grad).masked_fill(~mask[..., None], float("-inf")).amax(1)
                acc.index_add_(0, group, (weight[:, None] * m).double())

            def read_once():
                return act.sum(), grad.sum()

            t = bench_ops.interleaved_median_ms({"fused": fused, "plain": plain, "read": read_once}, dev, reps)
            row_bytes = 2 * N * act.element_size()
            counted = int(mask.sum())
            r = {"dtype": str(dtype).removeprefix("torch."), "site": site, "B": B, "T": T, "N": N,
                 "fused_ms": t["fused"], "plain_ms": t["plain"], "read_once_ms": t["read"],
                 "fused_gbs": counted * row_bytes / t["fused"] / 1e6,
                 "read_once_gbs": B * T * row_bytes / t["read"] / 1e6}
            r["of_read_once"] = r["fused_gbs"] / r["read_once_gbs"]
            r.update(_compare(ops, act, grad, mask, weight, group))
            rows.append(r)
            table.append(f"| {r['dtype']} | {site} | {B} x {T} x {N} | {r['fused_ms']:.3f} | {r['plain_ms']:.3f} | "
                         f"{r['read_once_ms']:.3f} | {r['fused_gbs']:.1f} | {r['read_once_gbs']:.1f} | "
                         f"{r['of_read_once']:.1%} | {r['equal_reference']} | {r['max_diff_reference']:.3g} / "
                         f"{r['max_diff_plain']:.3g} | {r['accumulate_equal_reference']} "
                         f"({r['accumulate_max_diff_reference']:.3g}) |")
            del act, grad, acc
            gc.collect()
            if dev.type == "cuda":
                torch.cuda.empty_cache()
    gate_bf16 = next(r for r in rows if r["dtype"] == "bfloat16" and r["site"] == "gate")
    all_equal = all(r["equal_reference"] for r in rows)
    return {"rows": rows, "table": table,
            "summary": f"gate bf16: {gate_bf16['fused_gbs']:.1f} GB/s = {gate_bf16['of_read_once']:.1%} of read-once "
                       f"(target >= 70%); fused == reference at every shape: {all_equal}"}


def in_child(ctx: Ctx, name: str) -> dict:
    """Run section ``name`` in a fresh process (bounded like every step) and return its result: a kernel that
    faults there (an illegal address poisons the CUDA context) cannot take the later sections with it."""
    result = ctx.out / f".{name}.result.json"
    result.unlink(missing_ok=True)
    cmd = [ctx.py, str(Path(__file__).resolve()), "--worker", name, "--out", str(ctx.out),
           "--deadline-at", str(ctx.deadline_at)] + (["--smoke"] if ctx.smoke else []) + (["--jit-ok"] if ctx.jit_ok else [])
    r = run_bounded(ctx, name, cmd)
    if not result.exists():
        why = f"timed out after {r['bound_s']} s" if r["timed_out"] else f"exit {r['rc']}"
        raise RuntimeError(f"the {name} process ended without a result ({why}; see {r['log']}): {r['tail'][-800:]}")
    data = json.loads(result.read_text())
    result.unlink()
    if "error" in data:
        raise ChildFailed(f"{data['error']} (in the {name} process; its traceback is in {r['log']})")
    return data


def worker(ctx: Ctx, name: str) -> int:
    """The child side of :func:`in_child`: run one section, write its result (or its error) atomically."""
    fn = {n: f for n, f, _ in SECTIONS}[name]
    signal.signal(signal.SIGALRM, _on_alarm)
    signal.alarm(max(1, int(ctx.remaining())))
    try:
        forced_failure(f"{name}.child")
        data = fn(ctx, isolated=False)
    except BaseException as exc:
        traceback.print_exc()
        data, rc = {"error": f"{type(exc).__name__}: {exc}"[:2000]}, 1
    else:
        rc = 0
    signal.alarm(0)
    write_atomic(ctx.out / f".{name}.result.json", json.dumps(data, default=str))
    return rc


def sec_large(ctx: Ctx, isolated: bool = True) -> dict:
    if isolated:
        return in_child(ctx, "large")
    import torch

    ops = _need_fused(ctx)
    N = 64 if ctx.smoke else 14336
    T = 64 if ctx.smoke else math.ceil((2**31 + 2**20) / N)  # a little over 2^31 elements per tensor
    elements = T * N
    act, grad, mask, weight, group = _inputs(1, T, N, torch.bfloat16, ctx.device, seed=7)
    sync(ctx.device)
    t0 = time.perf_counter()
    index, count = ops.token_list(mask)
    fused = torch.ops.culnig.max_attribution(act, grad, mask, index, count)
    sync(ctx.device)
    fused_s = time.perf_counter() - t0
    # Reference in slices of neurons (the max over tokens is per neuron): independent of the kernel's indexing.
    ref = torch.empty_like(fused)
    step = max(1, N // 8)
    for n0 in range(0, N, step):
        prod = act[:, :, n0:n0 + step].float() * grad[:, :, n0:n0 + step].float()
        ref[:, n0:n0 + step] = prod.masked_fill_(~mask[..., None], float("-inf")).amax(1)
        del prod
    equal = bool(torch.equal(fused, ref))
    diff = float((fused - ref).abs().max())
    label = f"1 x {T} x {N} bf16 = {elements:,} elements per tensor ({elements / 2**31:.3f} x 2^31)"
    if ctx.smoke:
        label += " (smoke: not > 2^31)"
    if not equal:
        raise RuntimeError(f"{label}: fused != reference (max |diff| {diff:.3g})")
    return {"elements": elements, "over_2_31": elements > 2**31, "equal_reference": equal, "max_diff": diff,
            "fused_s": fused_s, "summary": f"{label}: fused == reference, {fused_s * 1e3:.1f} ms"}


def model_config(kind: str, smoke: bool):
    """A Llama-3-8B-shaped or Qwen2-7B-shaped config (tiny ones for --smoke)."""
    from transformers import LlamaConfig, Qwen2Config

    if kind == "llama":
        if smoke:
            return LlamaConfig(vocab_size=1000, hidden_size=64, intermediate_size=224, num_hidden_layers=2,
                               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)
        return LlamaConfig(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                           num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=8192,
                           rope_theta=500000.0)
    if smoke:
        return Qwen2Config(vocab_size=1000, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)
    return Qwen2Config(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                       num_attention_heads=28, num_key_value_heads=4, max_position_embeddings=32768,
                       rope_theta=1000000.0, tie_word_embeddings=False)


def build_model(kind: str, device: str, smoke: bool):
    """Random weights initialised where the model runs (no 16 GB on the host), eval mode, sdpa attention."""
    import torch
    from transformers import AutoModelForCausalLM

    config = model_config(kind, smoke)
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32 if smoke else torch.bfloat16)
    return model.eval()


def make_items(vocab: int, n: int, length: int, seed: int = 0) -> list[dict]:
    """n prompts of length*0.75..length random tokens with one answer each, over 4 groups."""
    import torch

    g = torch.Generator().manual_seed(seed)
    items = []
    for i in range(n):
        k = length - int(torch.randint(0, length // 4 + 1, (1,), generator=g))
        items.append({"id": f"i{i}", "input_ids": torch.randint(10, vocab, (k,), generator=g).tolist(),
                      "answer_id": int(torch.randint(10, vocab, (1,), generator=g)), "group": f"g{i % 4}"})
    return items


def op_share(fn, device: str) -> float:
    """Share of the step's kernel time (CPU: op self time) spent in the culnig ops, by torch.profiler."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    cuda = device.startswith("cuda")
    with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])) as prof:
        fn()
        sync(device)
    total = ours = 0.0
    for e in prof.key_averages():
        if cuda:
            if e.device_type != torch.autograd.DeviceType.CUDA:
                continue
            t = getattr(e, "self_device_time_total", None)
            if t is None:
                t = e.self_cuda_time_total
        else:
            t = e.self_cpu_time_total
        total += t
        if "culnig" in e.key:
            ours += t
    return ours / total if total > 0 else float("nan")


def _scoring(ctx: Ctx, kind: str) -> dict:
    ops = _ops(ctx)  # before bench_scoring, which imports the ops
    import torch
    import bench_scoring
    import culnig_ext

    device = ctx.device
    cuda = device.startswith("cuda")
    batch, length, n_batches = (2, 32, 4) if ctx.smoke else (8, 1024, 4)
    model = build_model(kind, device, ctx.smoke)
    try:
        items = make_items(model.config.vocab_size, batch * (n_batches + 1), length, seed=1)
        warm, timed_items = items[:batch], items[batch:]
        chunks = [timed_items[i:i + batch] for i in range(0, len(timed_items), batch)]
        tokens = sum(len(it["input_ids"]) for it in timed_items)

        def score(its, **kw):
            return culnig_ext.score(model, its, batch_size=batch, progress=False, **kw)

        variants = {
            "score": lambda its: score(its),
            "bare": lambda its: [bench_scoring.run_a(model, c, device) for c in
                                 [its[i:i + batch] for i in range(0, len(its), batch)]],
            "forward": lambda its: [bench_scoring.run_e(model, c, device) for c in
                                    [its[i:i + batch] for i in range(0, len(its), batch)]],
            "score_ckpt": lambda its: score(its, checkpoint_activations=True),
        }
        res = {"model": f"{kind} {'(smoke, tiny, float32)' if ctx.smoke else 'full-size shape, random bfloat16'}",
               "parameters": sum(p.numel() for p in model.parameters()), "batch": batch, "length": length,
               "timed_batches": len(chunks), "timed_tokens": tokens, "backend": ops.backend(device)}
        for name, fn in variants.items():
            fn(warm)  # warm-up batch, not timed
            sync(device)
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
            fn(timed_items)
            sync(device)
            s = time.perf_counter() - t0
            res[f"{name}_s"] = s
            res[f"{name}_tok_s"] = tokens / s
            res[f"{name}_peak_gib"] = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
        res["op_share"] = op_share(lambda: score(chunks[0]), device)
        res["score_over_bare"] = res["score_s"] / res["bare_s"]
        res["ckpt_over_bare"] = res["score_ckpt_s"] / res["bare_s"]

        def gib(x):
            return "-" if x is None else f"{x:.2f} GiB"

        res["table"] = [
            f"{res['model']}, {res['parameters'] / 1e9:.2f} B parameters, backend {res['backend']}; "
            f"{len(chunks)} timed batches of {batch} x <= {length} tokens ({tokens} real tokens), one warm-up batch "
            "before them (not timed).", "",
            "| variant | seconds | tokens/s | x bare | peak memory |", "|---|---|---|---|---|",
            *[f"| {name} | {res[f'{name}_s']:.3f} | {res[f'{name}_tok_s']:,.0f} | "
              f"{res[f'{name}_s'] / res['bare_s']:.3f} | {gib(res[f'{name}_peak_gib'])} |" for name in variants],
            "", f"Op share of the score() step: {res['op_share']:.2%} (target < 2%); score / bare = "
                f"{res['score_over_bare']:.3f} (target <= 1.05).",
        ]
        res["summary"] = (f"score {res['score_tok_s']:,.0f} tok/s = {res['score_over_bare']:.3f}x bare "
                          f"({res['bare_tok_s']:,.0f} tok/s); op share {res['op_share']:.2%}; peak "
                          f"{gib(res['score_peak_gib'])} vs bare {gib(res['bare_peak_gib'])}")
        return res
    finally:
        del model
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()


def sec_scoring_llama(ctx: Ctx) -> dict:
    return _scoring(ctx, "llama")


def sec_scoring_qwen(ctx: Ctx) -> dict:
    return _scoring(ctx, "qwen")


def dist_worker(out: Path) -> None:
    """One rank of the distributed section (started by torchrun): score a small random Llama on cuda:LOCAL_RANK,
    rank 0 saves the table."""
    import torch
    import culnig_ext

    device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    torch.cuda.set_device(device)
    model = build_model("llama", device, smoke=True)
    table = culnig_ext.score(model, make_items(1000, 32, 32, seed=3), batch_size=4, progress=False)
    if int(os.environ.get("RANK", "0")) == 0:
        table.save(out / "dist_rank0.safetensors")


def sec_distributed(ctx: Ctx) -> dict | str:
    import torch

    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if n < 2:
        return f"skipped: {n} GPU(s), needs 2"
    import culnig_ext
    from culnig_ext.scoring.table import ScoreTable

    _ops(ctx)
    work = Path(tempfile.mkdtemp(prefix="culnig_gpu_check_dist_"))
    try:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
                   CULNIG_DIST_TIMEOUT="120")
        r = run_bounded(ctx, "distributed", [ctx.py, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
                                             "2", str(Path(__file__).resolve()), "--dist-worker", str(work)], env=env)
        if r["rc"] != 0:
            raise RuntimeError(f"torchrun exit {r['rc']}{' (timed out)' if r['timed_out'] else ''}: {r['tail'][-800:]}")
        two = ScoreTable.load(work / "dist_rank0.safetensors")
        model = build_model("llama", "cuda:0", smoke=True)
        one = culnig_ext.score(model, make_items(1000, 32, 32, seed=3), batch_size=4, progress=False)
        diffs = {s: float((two[s] - one[s]).abs().max() / one[s].abs().max().clamp_min(1e-30)) for s in one.sites}
        worst = max(diffs.values())
        same_counts = two.counts.tolist() == one.counts.tolist()
        if not same_counts or worst > 1e-4:
            raise RuntimeError(f"2 ranks != 1 process: counts equal {same_counts}, worst relative diff {worst:.3g}")
        return {"seconds": r["seconds"], "worst_relative_diff": worst,
                "summary": f"2-rank torchrun in {r['seconds']:.1f} s == one process (worst relative diff {worst:.2g})"}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def sec_aot_build(ctx: Ctx) -> dict | str:
    work = Path(tempfile.mkdtemp(prefix="culnig_gpu_check_aot_"))
    try:
        src = work / "src"
        src.mkdir()
        for name in ("setup.py", "pyproject.toml", "MANIFEST.in"):
            if (REPO / name).exists():
                shutil.copy2(REPO / name, src / name)
        for name in ("csrc", "culnig_ext"):
            shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("_C*.so", "__pycache__"))
        env = dict(os.environ, CULNIG_AOT="1", MAX_JOBS=os.environ.get("MAX_JOBS", str(os.cpu_count() or 1)))
        if ctx.smoke:  # the same subprocess path, no minutes-long CPU build
            cmd = [ctx.py, "setup.py", "--version"]
        else:
            cmd = [ctx.py, "setup.py", "-q", "build_ext", "--build-lib", str(work / "lib"), "--build-temp",
                   str(work / "tmp")]
        r = run_bounded(ctx, "aot_build", cmd, env=env, cwd=src)
        if r["rc"] != 0:
            why = f"timed out after {r['bound_s']} s" if r["timed_out"] else f"exit {r['rc']}"
            raise RuntimeError(f"the AOT build failed ({why}; see {r['log']}): {r['tail'][-500:]}")
        if ctx.smoke:
            return {"seconds": r["seconds"], "summary": "smoke: setup.py ran (--version), not built"}
        built = sorted((work / "lib").rglob("_C*.so"))
        if not built:
            raise RuntimeError(f"the AOT build left no culnig_ext/_C*.so (see {r['log']})")
        return {"seconds": r["seconds"], "library": built[0].name, "megabytes": built[0].stat().st_size / 1e6,
                "summary": f"built in {r['seconds']:.1f} s ({built[0].name}, {built[0].stat().st_size / 1e6:.1f} MB)"}
    finally:
        shutil.rmtree(work, ignore_errors=True)


# name, function, minimum seconds it needs (GPU run; --smoke: 1 s each)
SECTIONS = [
    ("environment", sec_environment, 5),
    ("jit_build", sec_jit_build, 30),
    ("cuda_tests", sec_cuda_tests, 20),
    ("op", sec_op, 20),
    ("large", sec_large, 15),
    ("scoring_llama", sec_scoring_llama, 40),
    ("scoring_qwen", sec_scoring_qwen, 40),
    ("distributed", sec_distributed, 20),
    ("aot_build", sec_aot_build, 40),
]


def _on_alarm(signum, frame):
    raise DeadlineExceeded("the overall deadline passed while this section ran")


def _on_term(signum, frame):
    raise Stopped("stopped by SIGTERM (the wrapping timeout?)")


def run_sections(ctx: Ctx, report: Report, selected: set[str] | None = None) -> int:
    """Run every section (of ``selected``, if given) in order, each in its own try block, recording it as soon
    as it ends; 1 if any failed or met the deadline, else 0."""
    signal.signal(signal.SIGALRM, _on_alarm)
    signal.signal(signal.SIGTERM, _on_term)
    bad = 0
    stopped = False
    for name, fn, minimum in SECTIONS:
        need = 1 if ctx.smoke else minimum
        if selected is not None and name not in selected:
            report.record(name, {"status": "skipped: not selected", "seconds": 0.0})
            continue
        if stopped:
            report.record(name, {"status": "skipped: stopped", "seconds": 0.0})
            continue
        if ctx.remaining() < need:
            report.record(name, {"status": "skipped: deadline", "seconds": 0.0,
                                 "summary": f"{max(ctx.remaining(), 0):.0f} s left, needs >= {need} s"})
            bad = 1
            continue
        print(f"== [gpu_check {time.time() - report.start:.0f} s] {name} ({ctx.remaining():.0f} s left)", flush=True)
        t0 = time.time()
        entry: dict = {"status": "running"}
        try:
            signal.alarm(max(1, int(ctx.remaining())))
            forced_failure(name)
            result = fn(ctx)
            signal.alarm(0)
            if isinstance(result, str):
                entry = {"status": result, "summary": result}
            else:
                entry = {"status": "ok", "summary": result.pop("summary", ""), "result": result}
        except BaseException as exc:  # SystemExit included: one section never takes the others with it
            signal.alarm(0)
            entry = {"status": "failed", "error": f"{type(exc).__name__}: {exc}"[:2000],
                     "traceback": traceback.format_exc()}
            bad = 1
            if isinstance(exc, (Stopped, KeyboardInterrupt)):
                stopped = True
        entry["seconds"] = time.time() - t0
        report.record(name, entry)
        print(f"   {name}: {entry['status']} in {entry['seconds']:.1f} s: "
              f"{entry.get('error') or entry.get('summary', '')}"[:400], flush=True)
    report.data["meta"]["finished"] = True
    report.write()
    return bad


def main(argv: list[str] | None = None) -> int:
    """Entry point: parse the options, run the sections, write OUT/gpu_check.{json,md}; the exit status."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", help="folder for gpu_check.md, gpu_check.json and the logs")
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny shapes: checks the script, measures nothing")
    parser.add_argument("--deadline", type=float, default=float(os.environ.get("GPU_CHECK_DEADLINE", 480)),
                        help="overall seconds from now (default $GPU_CHECK_DEADLINE or 480)")
    parser.add_argument("--deadline-at", type=float, default=None,
                        help="the deadline as Unix time (gpu_check.sh passes the one it started with)")
    parser.add_argument("--sections", default=os.environ.get("GPU_CHECK_SECTIONS"),
                        help="comma-separated sections to run (default $GPU_CHECK_SECTIONS or all): "
                             + ", ".join(name for name, _, _ in SECTIONS))
    parser.add_argument("--dist-worker", metavar="DIR", help=argparse.SUPPRESS)
    parser.add_argument("--worker", metavar="SECTION", help=argparse.SUPPRESS)
    parser.add_argument("--jit-ok", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.dist_worker:
        dist_worker(Path(args.dist_worker))
        return 0
    if not args.out:
        parser.error("--out is required")
    selected = None
    if args.sections:
        selected = {x.strip() for x in args.sections.split(",") if x.strip()}
        unknown = selected - {name for name, _, _ in SECTIONS}
        if unknown:
            parser.error(f"unknown section(s) {', '.join(sorted(unknown))}; the sections are "
                         + ", ".join(name for name, _, _ in SECTIONS))
    start = time.time()
    deadline_at = args.deadline_at if args.deadline_at is not None else start + args.deadline
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("CULNIG_NO_AOT", "1")  # the JIT build that jit_build timed, in this process and the tests
    ctx = Ctx(out, args.smoke, deadline_at)
    if args.worker:
        ctx.jit_ok = args.jit_ok
        return worker(ctx, args.worker)
    report = Report(out, args.smoke, deadline_at, start)
    report.write()
    bad = run_sections(ctx, report, selected)
    print(f"== [gpu_check {time.time() - start:.0f} s] done: {out / 'gpu_check.md'}", flush=True)
    print((out / "gpu_check.md").read_text(), flush=True)
    return bad


if __name__ == "__main__":
    sys.exit(main())
