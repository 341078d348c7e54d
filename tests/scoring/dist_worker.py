"""One rank of a real torch.distributed scoring job, started by tests/scoring/test_distributed.py with RANK, WORLD_SIZE,
MASTER_ADDR and MASTER_PORT set (as torchrun would): scores the tiny model's items and saves its table.

    python tests/scoring/dist_worker.py OUT_DIR N_ITEMS BATCH_SIZE WINDOW [FAIL_AT_BATCH]

With FAIL_AT_BATCH, rank 1 raises at that batch of its own (the other ranks must then stop, not hang).
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository: culnig_ext and tests.fixtures
import culnig_ext  # noqa: E402
from tests.fixtures import random_items, tiny_model  # noqa: E402


class InjectedFailure(RuntimeError):
    """The failure one rank raises on purpose."""


def main() -> None:
    out, n_items, batch_size, window = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    fail_at = int(sys.argv[5]) if len(sys.argv) > 5 else None
    rank = int(os.environ["RANK"])
    torch.set_num_threads(1)
    model = tiny_model("llama")
    seen: list[int] = []

    def count(module, args):
        seen.append(int(args[0].shape[0]))
        if fail_at is not None and rank == 1 and len(seen) == fail_at:
            raise InjectedFailure(f"rank {rank} fails on purpose at its batch {fail_at}")

    model.model.embed_tokens.register_forward_pre_hook(count)
    table = culnig_ext.score(model, random_items(n_items, seed=5, multi_token=True), batch_size=batch_size,
                             window=window, progress=False)
    table.save(out / f"rank{rank}.safetensors")
    (out / f"rank{rank}.json").write_text(json.dumps({"batches": seen}))


if __name__ == "__main__":
    main()
