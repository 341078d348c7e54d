"""The checks that need no model and no torch: option ranges, output locations and the one-line error message.

Every ``culnig`` command runs its ``*_options`` check before torch or transformers is imported, so a mistyped
number or an output path that cannot be written is answered in milliseconds (``tests/cli/test_fast_answers.py``
counts the modules imported). ``preflight`` runs the same checks first, then the ones that read data, tables or
the model's layout.

Each check raises ``ValueError`` naming the option (``--batch-size must be a whole number >= 1, got 0``); the
``*_options`` functions take the command's options as attributes of one object (an ``argparse.Namespace`` or a
config dataclass), read with ``getattr(opts, name, default)``.

Nothing here imports torch, transformers or a module that does (a test imports this module alone and checks).
"""
from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path
from typing import Any, Sequence

# ---------------------------------------------------------------------------------------------------- numbers


def positive_int(name: str, value: Any) -> int:
    """``value`` as an int >= 1, or ValueError naming the option."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a whole number >= 1, got {value!r}")
    return value


def non_negative_int(name: str, value: Any) -> int:
    """``value`` as an int >= 0, or ValueError naming the option."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be a whole number >= 0, got {value!r}")
    return value


def fraction(name: str, value: Any) -> float:
    """``value`` as a float in [0, 1], or ValueError naming the option (NaN and negative values refused)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a fraction in [0, 1], got {value!r}")
    return float(value)


def finite(name: str, value: Any, *, optional: bool = False) -> float | None:
    """``value`` as a finite float (None passes when ``optional``), or ValueError naming the option."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def optional_positive_int(name: str, value: Any) -> int | None:
    """None (no cap), or ``positive_int``."""
    return None if value is None else positive_int(name, value)


def flag(name: str) -> str:
    """The flag of a field: ``max_test_items`` -> ``--max-test-items``."""
    return "--" + name.replace("_", "-")


# ---------------------------------------------------------------------------------------------------- outputs


def _writable_folder(folder: Path, target: Path, what: str) -> None:
    """The nearest existing ancestor of ``folder`` (``folder`` itself if it exists) must be a writable folder."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(f"{what} {target}: cannot create it, {existing} is a file, not a folder")
    try:  # os.access says yes to root on a read-only mount; a real probe does not
        fd, probe = tempfile.mkstemp(prefix=".culnig-probe-", dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise ValueError(f"{what} {target}: cannot write in {existing} ({exc.strerror or exc})") from None


def output_file(path: str | os.PathLike, what: str = "--out") -> Path:
    """A file that can be written (atomically: a temp file in its folder, then a rename). Missing folders are
    created at write time; refuses a path that is a folder, or whose folder cannot be created or written."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{what} {path}: is a folder; give a file name")
    _writable_folder(path.parent, path, what)
    return path


def output_dir(path: str | os.PathLike, what: str = "--out", files: Sequence[str] = ()) -> Path:
    """A folder that can be created or written into; ``files`` named inside it must not be folders."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{what} {path}: is a file, not a folder")
    for name in files:
        if (path / name).is_dir():
            raise ValueError(f"{what} {path}: {path / name} is a folder; it must be a file (or absent)")
    _writable_folder(path, path, what)
    return path


# ------------------------------------------------------------------------------------------------ per command
#: The files a run folder holds at its top level (``reporting.report``'s names, repeated here without importing it;
#: ``tests/studies/test_option_checks.py`` checks that they agree).
RUN_FILES = ("results.json", "report.md", "report.html", "summary.md", "config.json")


def model_options(opts: Any) -> None:
    """The numbers every command that loads a model has."""
    positive_int("--batch-size", getattr(opts, "batch_size", 1))


def score_options(opts: Any) -> None:
    """``culnig score``: numbers and the output file."""
    model_options(opts)
    finite("--clamp-min", getattr(opts, "clamp_min", None), optional=True)
    positive_int("--checkpoint-every", getattr(opts, "checkpoint_every", 1))
    optional_positive_int("--max-items", getattr(opts, "max_items", None))
    output_file(opts.out)


def identify_options(opts: Any) -> None:
    """``culnig identify``: which selection and its fractions."""
    which = getattr(opts, "which", None)
    if which is None:
        raise ValueError("say which: 'culnig identify general ...' or 'culnig identify specific ...'")
    if which == "general":
        for name in ("t_mlp", "t_attn", "r_mlp", "r_attn"):
            fraction(flag(name), getattr(opts, name))
    else:
        if opts.all_groups == bool(opts.group):
            raise ValueError("give exactly one of --group NAME or --all-groups")
        fraction("--t", opts.t)
        fraction("--r", opts.r)
        finite("--z-min", opts.z_min, optional=True)


def evaluate_options(opts: Any) -> None:
    """``culnig evaluate``: counts of random sets (and what they need), the lm-eval limit, the batch size."""
    non_negative_int("--random", opts.random)
    if opts.random and not opts.inhibit:
        raise ValueError("--random needs --inhibit (random sets are drawn like the inhibited set)")
    non_negative_int("--paper-random", getattr(opts, "paper_random", 0))
    if getattr(opts, "paper_random", 0) and not opts.inhibit:
        raise ValueError("--paper-random needs --inhibit (random sets are drawn as large as the inhibited set)")
    optional_positive_int("--lm-eval-limit", getattr(opts, "lm_eval_limit", None))
    model_options(opts)


def overlap_options(opts: Any) -> None:
    """``culnig overlap``: at least two sets, one evaluation source per set, the batch size."""
    if len(opts.sets) < 2:
        raise ValueError(f"give at least 2 neuron sets to compare, got {len(opts.sets)}")
    if opts.eval and len(opts.eval) != len(opts.sets):
        raise ValueError(f"--eval: give one evaluation source per neuron set ({len(opts.sets)}), got {len(opts.eval)}")
    model_options(opts)


def run_options(cfg: Any) -> None:
    """``culnig run`` / ``run_pipeline``: every number and the run folder (``preflight.check_run`` adds the model,
    the device and the score tables already in the folder)."""
    for name in ("t_mlp", "t_attn", "r_mlp", "r_attn", "t_specific", "r_specific"):
        fraction(flag(name), getattr(cfg, name))
    finite("--z-min", cfg.z_min, optional=True)
    non_negative_int("--random", cfg.n_random)
    non_negative_int("--paper-random", getattr(cfg, "n_random_paper", 0))
    if getattr(cfg, "saq", None):
        optional_positive_int("--saq-max-per-country", cfg.saq_max_per_country)
        positive_int("--saq-max-new-tokens", cfg.saq_max_new_tokens)
    if getattr(cfg, "protocol", "ours") == "paper" and cfg.format == "cloze":
        raise ValueError("--protocol paper answers with the paper's letter/number labels: --format cloze does not apply")
    for name in ("max_test_items", "max_scoring_items", "kinship_groups", "format_probe_max", "threads"):
        optional_positive_int(flag(name), getattr(cfg, name, None))
    non_negative_int("--n-boot", getattr(cfg, "n_boot", 0))
    positive_int("--n-parts", getattr(cfg, "n_parts", 1))
    positive_int("--checkpoint-every", getattr(cfg, "checkpoint_every", 1))
    if cfg.format not in ("auto", "letter", "cloze"):
        raise ValueError(f"--format must be auto, letter or cloze, got {cfg.format!r}")
    control_option(getattr(cfg, "control", "empty"))
    from culnig_ext.studies.recipes import load_recipe

    load_recipe(getattr(cfg, "recipe", "culture"))  # a bad recipe: refused naming its file and key
    model_options(cfg)
    out = output_dir(cfg.out, files=RUN_FILES)
    scores = out / "scores"
    if scores.exists() and not scores.is_dir():
        raise ValueError(f"--out {out}: {scores} is a file; it must be the folder of score tables")


def control_option(control: str) -> str:
    """``--control``: ``empty``, ``frame``, ``transform:NAME`` (a named transform) or ``file:PATH`` (an existing
    file of control items)."""
    from culnig_ext.studies.recipes.schema import TRANSFORMS

    kind, _, rest = control.partition(":")
    if control in ("empty", "frame") or (kind == "transform" and rest in TRANSFORMS):
        return control
    if kind == "file" and rest:
        if not Path(rest).is_file():
            raise FileNotFoundError(f"--control {control}: no such file {rest}")
        return control
    raise ValueError(f"--control must be empty, frame, transform:NAME ({', '.join(TRANSFORMS)}) or file:PATH, "
                     f"got {control!r}")


def sweep_options(cfg: Any) -> None:
    """``culnig sweep`` / ``run_sweep``: every number and the output folder."""
    for name in ("t_mlp", "t_attn", "r_mlp", "r_attn"):
        fraction(flag(name), getattr(cfg, name))
    non_negative_int("--random", cfg.n_random)
    for name in ("max_scoring_items", "max_val_items", "max_test_items"):
        optional_positive_int(flag(name), getattr(cfg, name))
    for value in cfg.scale:
        finite("--scale", value)
        if not value > 0:
            raise ValueError(f"--scale: factors must be > 0, got {value}")
    if cfg.format not in ("letter", "cloze"):
        raise ValueError(f"--format must be letter or cloze, got {cfg.format!r}")
    model_options(cfg)
    output_dir(cfg.out, files=("results.json", "report.md", "report.html", "config.json", "split.json"))


def lape_options(cfg: Any) -> None:
    """LAPE's three rates (``culnig compare``, ``culnig validate``): fractions in (0, 1]."""
    for name in ("top_rate", "filter_rate", "activation_bar_ratio"):
        fraction(flag(name), getattr(cfg, name))
        if getattr(cfg, name) == 0:
            raise ValueError(f"{flag(name)} must be above 0, got 0")


def compare_options(cfg: Any) -> None:
    """``culnig compare`` / ``run_compare``: every number and the output folder."""
    for name in ("t_specific", "r_specific"):
        fraction(flag(name), getattr(cfg, name))
    lape_options(cfg)
    finite("--z-min", cfg.z_min, optional=True)
    non_negative_int("--random", cfg.n_random)
    for name in ("max_items", "max_test_items"):
        optional_positive_int(flag(name), getattr(cfg, name))
    model_options(cfg)
    output_dir(cfg.out, files=("compare.md", "compare.json", "report.html", "config.json"))


#: What ``culnig plant`` writes into its folder, and ``culnig validate`` into its own.
PLANT_FILES = ("planted.json",)
VALIDATE_FILES = ("validation.md", "validation.json", "timings.json", "report.html")


def plant_options(cfg: Any) -> None:
    """``culnig plant`` / ``studies.plant.plant``: every number and the output folder."""
    for name in ("countries", "facts_per_country", "neurons_per_country", "epochs", "train_batch_size",
                 "scoring_draws", "min_name_tokens"):
        positive_int(flag(name), getattr(cfg, name))
    if cfg.countries < 2:
        raise ValueError(f"--countries must be at least 2 (a country's distractors are the others' answers), "
                         f"got {cfg.countries}")
    non_negative_int("--kin-pairs", cfg.kin_pairs)
    if 2 * cfg.kin_pairs > cfg.countries:
        raise ValueError(f"--kin-pairs {cfg.kin_pairs}: disjoint pairs need {2 * cfg.kin_pairs} countries, "
                         f"--countries is {cfg.countries}")
    for name in ("kin_share", "target_accuracy"):
        fraction(flag(name), getattr(cfg, name))
    finite("--lr", cfg.lr)
    if not cfg.lr > 0:
        raise ValueError(f"--lr must be above 0, got {cfg.lr}")
    finite("--stop-loss", cfg.stop_loss)
    optional_positive_int("--reading-per-country", cfg.reading_per_country)
    model_options(cfg)
    output_dir(cfg.out, files=PLANT_FILES)


def validate_options(cfg: Any) -> None:
    """``culnig validate`` / ``studies.validate.validate``: every number and the output folder (the planted folder
    is read by ``studies.validate.read_planted``, before the model)."""
    for name in ("t_mlp", "t_attn", "r_mlp", "r_attn", "t_specific", "r_specific"):
        fraction(flag(name), getattr(cfg, name))
    lape_options(cfg)
    finite("--z-min", cfg.z_min, optional=True)
    non_negative_int("--n-boot", cfg.n_boot)
    positive_int("--sample-draws", cfg.sample_draws)
    non_negative_int("--random", cfg.n_random)
    for name in ("max_test_items", "max_general_items", "max_kinship_items"):
        optional_positive_int(flag(name), getattr(cfg, name))
    model_options(cfg)
    output_dir(cfg.out, files=VALIDATE_FILES)


def error_line(command: str, exc: BaseException) -> str:
    """``culnig <command>: error: <message>`` on one line (a message of several lines is joined with '; ')."""
    message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
    parts = [p.strip() for p in str(message).splitlines() if p.strip()] or [type(exc).__name__]
    text = parts[0]
    for part in parts[1:]:
        text += (" " if text.endswith(":") else "; ") + part
    return f"culnig {command}: error: {text}"


__all__ = [
    "RUN_FILES", "compare_options", "error_line", "evaluate_options", "finite", "flag", "fraction",
    "identify_options", "lape_options", "model_options", "non_negative_int", "optional_positive_int", "output_dir", "output_file",
    "overlap_options", "PLANT_FILES", "plant_options", "positive_int", "run_options", "score_options", "sweep_options",
    "VALIDATE_FILES", "validate_options",
]
