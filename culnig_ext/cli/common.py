"""What several subcommands share: option groups (model, format, scale, output/log/json) and small parsing helpers.

Nothing here imports torch or transformers at module level: ``culnig --help`` builds every subcommand's parser.
"""
from __future__ import annotations

import argparse
import contextlib

FORMATS = ("letter", "cloze")
SPLITS = ("neur", "test", "all")
DTYPES = ("float32", "bfloat16", "float16")
PROTOCOLS = ("ours", "paper")


def add_model_args(p: argparse.ArgumentParser) -> None:
    """The model to load and how to batch it (score, evaluate, overlap, finetune)."""
    p.add_argument("--model", default="smollm2",
                   help="embedded alias (smollm2, gemma3-270m), a .gguf file, a local model folder or a hub id "
                        "(default: smollm2)")
    p.add_argument("--dtype", default="float32", choices=list(DTYPES), help="weights' dtype (default: float32)")
    p.add_argument("--device", default=None, help="device for the whole model, e.g. cuda:0 (default: cpu)")
    p.add_argument("--batch-size", type=int, default=16, help="items per forward/backward pass (default: 16)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


def add_scale_args(p: argparse.ArgumentParser, *, score_only: bool = True) -> None:
    """Options of long scoring jobs (``culnig score``; ``culnig run`` forwards the ones that apply to it)."""
    p.add_argument("--checkpoint", default="auto",
                   help="snapshot file for resuming an interrupted run: a path, 'auto' (next to the output, "
                        "<out>.ckpt) or 'none' (default: auto). Re-running the same command resumes from it")
    p.add_argument("--checkpoint-every", type=int, default=20,
                   help="snapshot every N batches (and at least every 5 minutes) (default: 20)")
    p.add_argument("--device-map", default=None,
                   help="spread the model over devices: 'auto' or an accelerate map as JSON (default: none)")
    p.add_argument("--attn-implementation", default="sdpa", choices=["sdpa", "eager", "flash_attention_2"],
                   help="attention kernel; recorded in the table (default: sdpa)")
    if score_only:
        p.add_argument("--shard", default=None, metavar="K/N",
                       help="score only items K, K+N, K+2N, ... (0 <= K < N); 'culnig merge' the N outputs")
        p.add_argument("--sites", default=None,
                       help="comma-separated site names and/or kinds 'mlp', 'attn' (default: all)")
        p.add_argument("--max-items", type=int, default=None, help="score only the first N items")


def add_format(p: argparse.ArgumentParser, default: str = "letter") -> None:
    """``--format``: letter or cloze (and ``auto`` where that is the default)."""
    p.add_argument("--format", default=default, choices=FORMATS + (("auto",) if default == "auto" else ()),
                   help="letter: the next token is the option letter (instruction-tuned models); cloze: the target "
                        "is the option's text, scored by likelihood (small models) (default: %(default)s)")


def add_output_args(p: argparse.ArgumentParser) -> None:
    """``--log-level`` and ``--json``, on every subcommand (after its name: ``culnig run --json ...``)."""
    from culnig_ext._utils.logs import LEVELS

    p.add_argument("--log-level", default="info", choices=LEVELS,
                   help="messages on stderr from this level up (default: info)")
    p.add_argument("--json", action="store_true",
                   help="print a machine-readable JSON summary on stdout instead of the text summary")


def parse_shard(spec: str | None) -> tuple[int, int] | None:
    """``--shard K/N`` as ``(K, N)``; None without it."""
    if spec is None:
        return None
    try:
        k, n = (int(x) for x in spec.split("/"))
    except ValueError:
        raise ValueError(f"--shard must be K/N with integers, e.g. 0/4; got {spec!r}") from None
    if not 0 <= k < n:
        raise ValueError(f"--shard {spec}: need 0 <= K < N")
    return k, n


def parse_device_map(spec: str | None):
    """``--device-map``: 'auto', an accelerate map as JSON, or None."""
    from culnig_ext.models.loading import parse_device_map as parse

    return parse(spec)


def parse_csv(text: str, option: str, allowed: tuple[str, ...] | None = None) -> tuple[str, ...]:
    """A comma-separated option's values (at least one; each in ``allowed`` when given)."""
    values = tuple(v.strip() for v in text.split(",") if v.strip())
    if not values:
        raise ValueError(f"{option}: give at least one value")
    bad = [v for v in values if allowed is not None and v not in allowed]
    if bad:
        raise ValueError(f"{option}: {bad[0]!r} is not one of {allowed}")
    return values


@contextlib.contextmanager
def hf_bars(enabled: bool):
    """transformers' model-loading bars off while the body runs when ``enabled`` is False, restored after."""
    from transformers.utils import logging as hf_logging

    switch = not enabled and hf_logging.is_progress_bar_enabled()
    if switch:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if switch:
            hf_logging.enable_progress_bar()


def hide_hf_bars(args: argparse.Namespace):
    """``--no-progress`` (or ``progress=False``) hides the Hugging Face loading bars (transformers' and the hub's)
    for the whole command (they would bury a one-line error on stderr); returns the function that shows them again,
    or None. Imports no torch or transformers: the hub's switch, set before transformers is imported, is what
    transformers reads when it is."""
    if not (getattr(args, "no_progress", False) or getattr(args, "progress", True) is False):
        return None
    import sys

    from huggingface_hub import utils as hub_utils

    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        if not hf_logging.is_progress_bar_enabled():
            return None
        hf_logging.disable_progress_bar()
        return hf_logging.enable_progress_bar
    if hub_utils.are_progress_bars_disabled():
        return None
    hub_utils.disable_progress_bars()

    def restore() -> None:
        if "transformers" in sys.modules:  # imported since: it read the switch then; set both back
            from transformers.utils import logging as hf_logging

            hf_logging.enable_progress_bar()
        else:
            hub_utils.enable_progress_bars()

    return restore
