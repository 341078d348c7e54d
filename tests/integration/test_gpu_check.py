"""scripts/gpu_check.sh --smoke: the unattended GPU check runs end to end on the CPU with tiny shapes (so the script
a GPU session will run has been run here); each section is written as soon as it ends, a failing section (exception
or SystemExit) leaves the others in gpu_check.json / gpu_check.md with its error, and the overall deadline stops a
section that runs too long and skips the ones after it."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ALL = ["environment", "jit_build", "cuda_tests", "op", "large", "scoring_llama", "scoring_qwen", "distributed",
       "aot_build"]


def run_check(out: Path, *args: str, **env_extra: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items()
           if k not in ("CULNIG_FORCE_REFERENCE", "OUT", "GPU_CHECK_FAIL", "GPU_CHECK_SECTIONS", "GPU_CHECK_DEADLINE")}
    env.update(PY=sys.executable, **env_extra)
    return subprocess.run(["bash", str(REPO / "scripts" / "gpu_check.sh"), str(out), "--smoke", *args], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=600)


def md_rows(text: str) -> dict[str, list[str]]:
    """The section table of gpu_check.md: section name -> its cells."""
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if line.startswith("| ") and cells[0] in ALL:
            rows[cells[0]] = cells
    return rows


def test_gpu_check_smoke_writes_every_section(tmp_path):
    proc = run_check(tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads((tmp_path / "gpu_check.json").read_text())
    assert data["meta"]["smoke"] is True and data["meta"]["finished"] is True
    sections = data["sections"]
    assert list(sections) == ALL
    status = {name: s["status"] for name, s in sections.items()}
    assert status == {**{n: "ok" for n in ALL}, "distributed": "skipped: 0 GPU(s), needs 2"}, status
    assert "skipped" in sections["cuda_tests"]["summary"]  # the CUDA tests ran (and skipped: no GPU here)
    op = sections["op"]["result"]["rows"]
    assert [(r["dtype"], r["site"]) for r in op] == [(d, s) for d in ("bfloat16", "float32") for s in ("gate", "q", "k/v")]
    assert all(r["equal_reference"] and r["accumulate_equal_reference"] for r in op)
    assert all(r["fused_gbs"] > 0 and r["read_once_gbs"] > 0 for r in op)
    for name in ("scoring_llama", "scoring_qwen"):
        sc = sections[name]["result"]
        assert sc["timed_batches"] >= 4 and sc["timed_tokens"] > 0, sc
        assert sc["score_s"] > 0 and sc["bare_s"] > 0 and sc["score_ckpt_s"] > 0 and sc["forward_s"] > 0
        assert 0 < sc["op_share"] < 1  # the profiler found the fused op in the step
    assert sections["large"]["result"]["equal_reference"] is True
    text = (tmp_path / "gpu_check.md").read_text()
    assert "SMOKE RUN" in text
    assert list(md_rows(text)) == ALL
    assert "## op" in text and "## scoring_qwen" in text
    assert "== [gpu_check" in (tmp_path / "gpu_check.log").read_text()  # the script's own output is kept too
    assert not list(tmp_path.glob(".*.tmp"))  # written through temporary files, none left behind


def test_a_failing_section_leaves_the_others_and_its_error(tmp_path):
    proc = run_check(tmp_path, GPU_CHECK_SECTIONS="environment,jit_build,op,large",
                     GPU_CHECK_FAIL="environment:exit,op")
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    sections = json.loads((tmp_path / "gpu_check.json").read_text())["sections"]
    assert list(sections) == ALL
    assert sections["environment"]["status"] == "failed"
    assert sections["environment"]["error"] == "SystemExit: forced SystemExit in environment (GPU_CHECK_FAIL)"
    assert sections["op"]["status"] == "failed"
    assert sections["op"]["error"] == "RuntimeError: forced failure in op (GPU_CHECK_FAIL)"
    assert "Traceback" in sections["op"]["traceback"]
    assert sections["jit_build"]["status"] == "ok" and sections["large"]["status"] == "ok"
    for name in ("cuda_tests", "scoring_llama", "scoring_qwen", "distributed", "aot_build"):
        assert sections[name]["status"] == "skipped: not selected"
    rows = md_rows((tmp_path / "gpu_check.md").read_text())
    assert rows["environment"][1] == "failed" and "forced SystemExit" in rows["environment"][3]
    assert rows["op"][1] == "failed" and "forced failure in op" in rows["op"][3]
    assert rows["large"][1] == "ok" and "fused == reference" in rows["large"][3]


def test_a_failure_in_the_child_process_is_recorded_with_its_error(tmp_path):
    proc = run_check(tmp_path, GPU_CHECK_SECTIONS="jit_build,large", GPU_CHECK_FAIL="large.child")
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    sections = json.loads((tmp_path / "gpu_check.json").read_text())["sections"]
    assert sections["jit_build"]["status"] == "ok"
    large = sections["large"]
    assert large["status"] == "failed"
    assert large["error"] == ("ChildFailed: RuntimeError: forced failure in large.child (GPU_CHECK_FAIL) "
                              "(in the large process; its traceback is in large.log)"), large["error"]
    assert "Traceback" in (tmp_path / "large.log").read_text()
    assert not list(tmp_path.glob(".large.result.json"))  # the child's result file is read and removed


def test_the_deadline_stops_a_section_and_skips_the_rest(tmp_path):
    proc = run_check(tmp_path, "--deadline", "15", GPU_CHECK_FAIL="jit_build:hang")
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    sections = json.loads((tmp_path / "gpu_check.json").read_text())["sections"]
    assert sections["environment"]["status"] == "ok"
    jit = sections["jit_build"]
    assert jit["status"] == "failed" and jit["error"].startswith("DeadlineExceeded"), jit
    for name in ALL[2:]:
        assert sections[name]["status"] == "skipped: deadline", (name, sections[name])
    rows = md_rows((tmp_path / "gpu_check.md").read_text())
    assert [rows[name][1] for name in ALL[2:]] == ["skipped: deadline"] * len(ALL[2:])


def test_bad_deadline_is_refused_with_a_clear_message(tmp_path):
    proc = run_check(tmp_path, "--deadline", "soon")
    assert proc.returncode == 2
    assert "the deadline must be a whole number of seconds >= 1, got 'soon'" in proc.stderr
