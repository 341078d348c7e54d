"""Data-parallel scoring on torch.distributed with real processes: a 2-rank gloo job equals the single-process table
(and the float64 reference), the batches are split by tokens, and a rank that fails stops the other in bounded time.
The token-balanced assignment is checked against a hand-worked example."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import culnig_ext
from culnig_ext.scoring.distributed import assign
from culnig_ext.scoring.table import ScoreTable
from tests.scoring.test_scorer import reference_scores
from tests.fixtures import random_items, tiny_model
from tests.fixtures import one_thread  # noqa: F401  (autouse: one intra-op thread for the tiny models)

WORKER = Path(__file__).with_name("dist_worker.py")
ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_ranks(out: Path, world: int, *args: str, timeout_s: int = 60) -> list[subprocess.Popen]:
    port = free_port()
    procs = []
    for rank in range(world):
        env = dict(os.environ, RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                   MASTER_PORT=str(port), CULNIG_DIST_TIMEOUT=str(timeout_s), OMP_NUM_THREADS="1",
                   PYTHONPATH=str(ROOT))
        procs.append(subprocess.Popen([sys.executable, str(WORKER), str(out), *args], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    return procs


def test_assign_balances_tokens_longest_first():
    # Worked by hand: batches of 9, 7, 6, 5, 2 tokens over 2 ranks: 9->r0, 7->r1, 6->r1 (7<9), 5->r0 (9<13),
    # 2->r1 (13<14): loads 14 and 15.
    loads = [0, 0]
    assert assign([5, 9, 2, 7, 6], loads) == [0, 0, 1, 1, 1]
    assert loads == [14, 15]
    # loads carry over to the next window: rank 0 (14) gets the next batch
    assert assign([3], loads) == [0] and loads == [17, 15]


def test_two_rank_gloo_job_equals_the_single_process_table(tmp_path):
    n_items, batch_size, window = 18, 2, 2
    procs = start_ranks(tmp_path, 2, str(n_items), str(batch_size), str(window))
    outs = [p.communicate(timeout=240) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    ranks = [ScoreTable.load(tmp_path / f"rank{r}.safetensors") for r in range(2)]
    batches = [json.loads((tmp_path / f"rank{r}.json").read_text())["batches"] for r in range(2)]
    # each rank scored a disjoint share of the batches, together every item once
    assert all(batches) and sum(map(sum, batches)) == n_items
    model = tiny_model("llama")
    items = random_items(n_items, seed=5, multi_token=True)
    single = culnig_ext.score(model, items, batch_size=batch_size, progress=False, distributed=False)
    groups, ref_sums, ref_probs = reference_scores(model, "llama", items)
    for table in ranks:  # every rank holds the all-reduced table
        assert table.groups == single.groups == groups
        assert table.counts.tolist() == single.counts.tolist()
        assert table.metadata["dataset_fingerprint"] == single.metadata["dataset_fingerprint"]
        assert torch.equal(table.item_hashes, single.item_hashes)
        torch.testing.assert_close(table.prob_sums, single.prob_sums, rtol=1e-12, atol=0)
        for site in single.sites:
            torch.testing.assert_close(table[site], single[site], rtol=1e-10, atol=1e-14)
            # P enters the fused op as float32 (as in test_scorer's reference comparison)
            torch.testing.assert_close(table[site], ref_sums[site], rtol=1e-6,
                                       atol=1e-12 * ref_sums[site].abs().max().item())
        torch.testing.assert_close(table.prob_sums, ref_probs, rtol=1e-10, atol=0)


def test_a_failing_rank_stops_the_other_within_bounded_time(tmp_path):
    procs = start_ranks(tmp_path, 2, "18", "2", "2", "2", timeout_s=60)
    # communicate's timeout is the bound: a hang raises TimeoutExpired
    outs = [p.communicate(timeout=120) for p in procs]
    assert procs[1].returncode != 0 and "fails on purpose" in outs[1][1]
    assert procs[0].returncode != 0, "rank 0 must not succeed when rank 1 failed"
    assert "rank(s) [1] of the job failed" in outs[0][1], outs[0][1][-3000:]
    # the flag all-reduce, not the 60 s process-group timeout, stopped rank 0 (that would fail with a gloo error)
    assert not list(tmp_path.glob("*.safetensors")), "no table is written by a failed job"


def test_distributed_true_without_a_job_is_refused(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(ValueError, match="torchrun"):
        culnig_ext.score(tiny_model("llama"), random_items(2), distributed=True, progress=False)


def test_torchrun_culnig_score_equals_the_single_process_output(tmp_path):
    from culnig_ext.cli import main as cli
    from culnig_ext.data import CULTURAL_PATH
    from tests.studies.test_pipeline import save_tiny_model

    model_dir = save_tiny_model(tmp_path / "model")
    args = ["score", "--model", str(model_dir), "--data", str(CULTURAL_PATH), "--format", "cloze", "--batch-size",
            "4", "--max-items", "24", "--no-progress"]
    single = tmp_path / "single.safetensors"
    assert cli.main(args + ["--out", str(single), "--checkpoint", "none"]) == 0
    out = tmp_path / "two.safetensors"
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", CULNIG_DIST_TIMEOUT="120")
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                          "-m", "culnig_ext.cli.main", *args, "--out", str(out)], env=env, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "(2 ranks)" in run.stdout
    one, two = ScoreTable.load(single), ScoreTable.load(out)
    assert two.groups == one.groups and two.counts.tolist() == one.counts.tolist()
    assert two.metadata == one.metadata
    for site in one.sites:  # float32 model: different batch compositions round differently
        torch.testing.assert_close(two[site], one[site], rtol=1e-5, atol=1e-9 * one[site].abs().max().item())
    assert sorted(p.name for p in tmp_path.iterdir() if "ckpt" in p.name) == [], "per-rank checkpoints removed"
