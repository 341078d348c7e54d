"""scripts/gpu_check.sh --smoke: the prepared GPU check runs end to end on the CPU with small shapes and writes its
one Markdown table (so the script a GPU session will run has been run here)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_gpu_check_smoke_writes_the_table(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "CULNIG_FORCE_REFERENCE"}
    env["PYTHON"] = sys.executable
    proc = subprocess.run(["bash", str(REPO / "scripts" / "gpu_check.sh"), str(tmp_path), "--smoke"], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    table = (tmp_path / "gpu_check.md").read_text()
    assert "SMOKE RUN" in table
    rows = [line for line in table.splitlines() if line.startswith("| ")]
    assert rows[0] == "| check | measured | target | met |"
    names = [r.split(" | ")[0] for r in rows[1:]]
    assert names == [
        "| build of the extension", "| tests/kernels/test_ops_cuda.py (ops + GPU scorer)",
        "| fused op bfloat16 B=2 T=64 N=520", "| fused op float32 B=2 T=64 N=520", "| scoring model",
        "| score() time / bare frozen fwd+bwd", "| fused op share of the step", "| forward only",
        "| score() with activation checkpointing", "| peak memory: bare / score / score+ckpt / forward",
    ], names
    assert "skipped" in rows[2]  # the CUDA tests ran (and skipped: no GPU here)
    data = json.loads((tmp_path / "gpu_check.json").read_text())
    assert {r["dtype"] for r in data["op"]} == {"bfloat16", "float32"}
    assert all(r["fused_gbs"] > 0 and r["read_once_gbs"] > 0 for r in data["op"])
    sc = data["scoring"]
    assert sc["tokens"] > 0 and sc["score_s"] > 0 and sc["bare_s"] > 0 and sc["score_ckpt_s"] > 0
    assert 0 < sc["op_share"] < 1  # the profiler found the fused op in the step
