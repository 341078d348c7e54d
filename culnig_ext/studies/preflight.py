"""Checks that run before any model is loaded or any item scored: fail in seconds, not after hours, and write nothing.

Every ``culnig`` command (and ``run_pipeline``) calls its ``check_*`` function first. It checks the options' ranges,
reads and validates the data, parses the neuron sets and score tables it is given (and checks that they fit each
other and the model's site layout), resolves the model name without loading weights (a local folder's or hub model's
config builds the model on PyTorch's meta device, so its sites and widths are known; a GGUF file's tensor shapes are
read from its header), and checks that every output location can be written: a missing folder is created when the
output is written (that is the obvious intent), but the nearest existing folder must be a folder and writable, which
is probed by creating and removing a temp file in it. Each check raises ``ValueError`` / ``FileNotFoundError``
naming the option, file, line or field; nothing is written before every check has passed.

The ``check_*`` functions take the command's options as attributes of one object (an ``argparse.Namespace`` or a
``RunConfig``), read with ``getattr(opts, name, default)`` so that options added later can be checked here too.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from culnig_ext.data import load_items
from culnig_ext.data.schema import MCItem
from culnig_ext.selection.neurons import NeuronSet, site_widths
from culnig_ext.scoring.table import ScoreTable
from culnig_ext._utils.textfile import describe_utf8_error
from culnig_ext.studies import option_checks
from culnig_ext.studies.option_checks import (
    error_line,
    finite,
    fraction,
    non_negative_int,
    output_dir,
    output_file,
    positive_int,
)

# ---------------------------------------------------------------------------------------------------- numbers
# The checks that need no torch (numbers, output locations, the error line) live in ``option_checks``; they are
# re-exported here for the callers that use them beside the checks below.


def device(value: str | None) -> None:
    """A device string PyTorch parses and this machine has (``cuda:1`` on a one-GPU or CPU-only machine is refused)."""
    if value is None:
        return
    try:
        dev = torch.device(value)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"--device {value!r}: not a device ({exc})") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {value}: CUDA is not available on this machine")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"--device {value}: this machine has {torch.cuda.device_count()} CUDA device(s)")


# ----------------------------------------------------------------------------------------------------- inputs


def items(source: str, what: str = "--data", loader: Any = None, **load_kw: Any) -> list[MCItem]:
    """``load_items(source, **load_kw)`` (or ``loader``); errors name the option as well as the file, line and
    field."""
    try:
        return (loader or load_items)(source, **load_kw)
    except UnicodeDecodeError as exc:  # a reader that did not name the file: name the source
        if Path(source).is_file():
            raise ValueError(describe_utf8_error(source)) from None
        raise ValueError(f"{what} {source}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def _head(path: Path, n: int = 16) -> bytes:
    with open(path, "rb") as f:
        return f.read(n)


def _looks_like_safetensors(path: Path, head: bytes) -> bool:
    # safetensors: an 8-byte little-endian header length, then the JSON header.
    return len(head) >= 10 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < path.stat().st_size


def _sniff_table(path: Path, what: str) -> None:
    if not path.is_file():
        raise FileNotFoundError(f"{what}: score file not found: {path}")
    head = _head(path)
    if not head:
        raise ValueError(f"{path}: empty file; {what} must be a score table (.safetensors) from 'culnig score'")
    if head.lstrip()[:1] in (b"{", b"["):
        raise ValueError(f"{path}: a JSON file (a neuron set?); {what} must be a score table (.safetensors) "
                         "from 'culnig score'")


def score_table(path: str | os.PathLike, what: str = "score table") -> ScoreTable:
    """Load a score table (``culnig score``'s output); a neuron set or other JSON given in its place is named."""
    path = Path(path)
    _sniff_table(path, what)
    return ScoreTable.load(path)


def score_table_header(path: str | os.PathLike, what: str = "score table") -> None:
    """Check a score table without reading its tensors: the safetensors header (which must cover the whole file,
    so a truncated file is refused) and the format. For tables that are only reused later."""
    from safetensors import SafetensorError, safe_open

    from culnig_ext.scoring.table import FORMAT_VERSION

    path = Path(path)
    _sniff_table(path, what)
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = dict(handle.metadata() or {})
    except (SafetensorError, OSError, ValueError) as exc:
        raise ValueError(f"{path}: not a readable safetensors score file ({exc})") from None
    if metadata.get("format") != FORMAT_VERSION:
        raise ValueError(f"{path}: format {metadata.get('format')!r} is not {FORMAT_VERSION!r}")


def neuron_set(path: str | os.PathLike, what: str = "--inhibit") -> NeuronSet:
    """Load a neuron set (``culnig identify``'s output); a score table given in its place is named."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what}: neuron file not found: {path}")
    head = _head(path)
    if not head:
        raise ValueError(f"{path}: empty file; {what} must be a neuron set (JSON) from 'culnig identify'")
    if _looks_like_safetensors(path, head):
        raise ValueError(f"{path}: a safetensors score table; {what} must be a neuron set (JSON) from "
                         "'culnig identify'")
    return NeuronSet.load(path)


def same_layout(tables: Mapping[str, ScoreTable]) -> dict[str, int]:
    """Tables (keyed by file name) of one model: the same sites with the same widths, and no two model names that
    differ. Returns the site widths."""
    (first_name, first), *rest = tables.items()
    widths = site_widths(first)
    if not widths:
        raise ValueError(f"{first_name}: the table has no sites")
    for name, table in rest:
        theirs = site_widths(table)
        if list(theirs) != list(widths):
            only_first = [s for s in widths if s not in theirs][:3]
            only_this = [s for s in theirs if s not in widths][:3]
            raise ValueError(f"{name}: other sites than {first_name} (only there: {only_first}, only here: "
                             f"{only_this}); tables of another model or site layout")
        for site, width in widths.items():
            if theirs[site] != width:
                raise ValueError(f"{name}: site {site!r} has width {theirs[site]}, but {width} in {first_name}; "
                                 "tables of another model")
        a, b = first.metadata.get("model"), table.metadata.get("model")
        if a and b and a != b:
            raise ValueError(f"{name}: scores of model {b!r}, but {first_name} of model {a!r}")
    return widths


def _gguf_layout(path: Path, name: str) -> dict[str, int] | None:
    from culnig_ext.models.gguf_header import GGUFHeaderError, site_widths as gguf_site_widths

    if _head(path, 4) != b"GGUF":
        raise ValueError(f"--model {name}: {path} is not a GGUF file (it does not start with 'GGUF')")
    try:
        return gguf_site_widths(path)
    except GGUFHeaderError as exc:
        raise ValueError(f"--model {name}: {exc}") from None


def model_layout(name: str) -> dict[str, int] | None:
    """Resolve a model name without loading weights; returns ``{site: width}`` when the layout is known.

    Local folders and hub ids: the config is read (downloaded for a hub id, a few KB) and the model built on the
    meta device (no memory, no weights). GGUF files (the embedded models too): the tensor shapes in the file's
    header (``gguf_header``); None for a GGUF of fused projections, whose layout is checked after loading. Raises
    ValueError / FileNotFoundError naming the model."""
    from culnig_ext.models.loading import resolve
    from culnig_ext.models.sites import neuron_sites

    path, kwargs, _ = resolve(name)
    if "gguf_file" in kwargs:
        return _gguf_layout(Path(path) / kwargs["gguf_file"], name)
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(path)
        with torch.device("meta"):
            skeleton = AutoModelForCausalLM.from_config(config)
        return {site.name: int(site.width) for site in neuron_sites(skeleton)}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"--model {name}: cannot use it ({first})") from None


# ------------------------------------------------------------------------------------------------ per command


def model_options(opts: Any) -> dict[str, int] | None:
    """The batch size, the device and the model's layout (``model_layout``)."""
    option_checks.model_options(opts)
    device(getattr(opts, "device", None))
    return model_layout(opts.model)


def check_score(opts: Any) -> Any:
    """``culnig score``: options, items (returned: a list, or a re-iterable lazy reader of a .jsonl), model, output
    file, checkpoint file."""
    from culnig_ext.scoring.resume import resolve_checkpoint
    from culnig_ext.data.streaming import lazy_item_source

    option_checks.score_options(opts)
    # a canonical .jsonl streams: validated here in one pass, read again lazily while scoring
    loaded = items(opts.data, split=opts.split, seed=opts.seed, loader=lazy_item_source)
    model_options(opts)
    output_file(opts.out)
    checkpoint = resolve_checkpoint(getattr(opts, "checkpoint", None), opts.out)
    if checkpoint:
        output_file(checkpoint, "--checkpoint")
    return loaded


def check_merge(opts: Any) -> list[ScoreTable]:
    """``culnig merge``: every table readable and of one model and layout, the output writable. Provenance and
    overlapping items are compared by ``ScoreTable.merge`` itself."""
    paths = list(opts.tables)
    tables = [score_table(p, "culnig merge") for p in paths]
    same_layout({str(p): t for p, t in zip(paths, tables)})
    output_file(opts.out)
    return tables


@dataclass
class IdentifyInputs:
    """The tables of ``culnig identify``: ``neur`` and the optional ``ctrl``, ``crc``, ``contrast``."""

    neur: ScoreTable
    ctrl: ScoreTable | None
    crc: ScoreTable | None
    contrast: ScoreTable | None = None


def check_identify(opts: Any) -> IdentifyInputs:
    """``culnig identify``: which selection, fractions, tables (parsed, same model and layout), group, output."""
    option_checks.identify_options(opts)
    which = opts.which
    paths = {role: getattr(opts, role, None) for role in ("neur", "ctrl", "crc", "contrast")}
    tables = {role: score_table(p, f"--{role}") for role, p in paths.items() if p}
    same_layout({str(paths[role]): table for role, table in tables.items()})
    neur = tables["neur"]
    if which == "specific" and opts.group and opts.group not in neur.groups:
        raise ValueError(f"unknown group {opts.group!r}; {paths['neur']} has {neur.groups}")
    if which == "specific" and opts.all_groups:
        output_dir(opts.out)
    else:
        output_file(opts.out)
    return IdentifyInputs(neur, tables.get("ctrl"), tables.get("crc"), tables.get("contrast"))


@dataclass
class EvaluateInputs:
    """``culnig evaluate``'s item sets (by source) and the neuron set to inhibit (None: plain evaluation)."""

    sets: dict[str, list[MCItem]]
    neurons: NeuronSet | None
    lm_eval_tasks: list[str] = field(default_factory=list)


def check_evaluate(opts: Any) -> EvaluateInputs:
    """``culnig evaluate``: options, item sets, neuron set (parsed, fits the model's layout), model, output."""
    option_checks.evaluate_options(opts)
    tasks = [t.strip() for t in (getattr(opts, "lm_eval", None) or "").split(",") if t.strip()]
    if not opts.data and not tasks:
        raise ValueError("give --data (an item source) and/or --lm-eval TASKS")
    if getattr(opts, "lm_eval_include", None) and not Path(opts.lm_eval_include).is_dir():
        raise FileNotFoundError(f"--lm-eval-include {opts.lm_eval_include}: folder not found")
    if tasks:
        from culnig_ext.intervention.lmeval import check_tasks

        check_tasks(tasks, getattr(opts, "lm_eval_include", None))
    sets = {source: items(source, split=opts.split, seed=opts.seed) for source in opts.data}
    neurons = neuron_set(opts.inhibit) if opts.inhibit else None
    layout = model_options(opts)
    if neurons is not None and layout is not None:
        try:
            neurons.validate(layout)
        except ValueError as exc:
            raise ValueError(f"{opts.inhibit}: {exc} (model {opts.model})") from None
    from culnig_ext.reporting.report import REPORT_FILE, RESULTS_FILE

    out = output_dir(opts.out, files=(RESULTS_FILE, REPORT_FILE))
    if (out / "eval").exists() and not (out / "eval").is_dir():
        raise ValueError(f"--out {out}: {out / 'eval'} is a file; it must be the folder of evaluation records")
    return EvaluateInputs(sets, neurons, tasks)


def check_report(opts: Any):
    """``culnig report``: the run folder's results.json (parsed and validated, returned) and its output files."""
    from culnig_ext.reporting.report import HTML_FILE, KINSHIP_PNG, LAYERS_PNG, REPORT_FILE, RESULTS_FILE, read_results

    run_dir = Path(opts.run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run folder not found: {run_dir}" if not run_dir.exists()
                                else f"{run_dir}: not a folder; give the run folder that holds results.json")
    results = read_results(run_dir)
    output_dir(run_dir, what="run folder", files=(RESULTS_FILE, REPORT_FILE, KINSHIP_PNG, LAYERS_PNG, HTML_FILE))
    return results


def check_export(opts: Any) -> Path:
    """``culnig export``: the run folder exists and is a folder, and the output can be written (``--out``, else
    ``RUN/export``); the folder's sets and tables are read (and their errors raised) before anything is written."""
    run_dir = Path(opts.run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run folder not found: {run_dir}" if not run_dir.exists()
                                else f"{run_dir}: not a folder; give the run folder (culnig run --out)")
    if opts.out is not None:
        output_file(opts.out)
    else:
        output_dir(run_dir / "export", what="export folder")
    return run_dir


RUN_TABLES = ("neur_parts", "ctrl_parts", "neur", "ctrl", "crc", "general")


def protocol(name: Any) -> str:
    """``--protocol``: ``ours`` or ``paper``."""
    from culnig_ext.data.protocols import PROTOCOLS

    if name not in PROTOCOLS:
        raise ValueError(f"--protocol must be one of {', '.join(PROTOCOLS)}, got {name!r}")
    return name


def check_prompts(opts: Any) -> list[MCItem]:
    """``culnig prompts``: protocol, format, output file, items (returned), model (checked, weights not loaded)."""
    from culnig_ext.data.model_inputs import paper_source

    protocol(opts.protocol)
    if opts.protocol == "paper" and opts.format == "cloze":
        raise ValueError("--protocol paper answers with the paper's letter/number labels: --format cloze does not apply")
    output_file(opts.out)
    source = paper_source(opts.data) if opts.protocol == "paper" else opts.data
    loaded = items(source, split=opts.split, seed=opts.seed)
    model_layout(opts.model)  # the same checks as the commands that load weights (no weights read here)
    return loaded


@dataclass
class OverlapInputs:
    """The neuron sets of ``culnig overlap`` by name, and their evaluation sets (by the same names) when given."""

    sets: dict[str, NeuronSet]
    eval_sets: dict[str, list[MCItem]] | None


def check_overlap(opts: Any) -> OverlapInputs:
    """``culnig overlap``: neuron sets (parsed; at least 2), evaluation sources (one per set), model, output."""
    from culnig_ext.studies.overlap import OVERLAP_JSON, OVERLAP_MD, OVERLAP_PNG, set_name

    option_checks.overlap_options(opts)
    sets: dict[str, NeuronSet] = {}
    for path in opts.sets:
        sets[set_name(path, list(sets))] = neuron_set(path, "neuron set")
    eval_sets = None
    if opts.eval:
        if len(opts.eval) != len(opts.sets):
            raise ValueError(f"--eval: give one evaluation source per neuron set ({len(opts.sets)}), "
                             f"got {len(opts.eval)}")
        protocol(opts.protocol)
        eval_sets = {}
        for name, source in zip(sets, opts.eval):
            if opts.protocol == "paper":
                from culnig_ext.data.model_inputs import paper_source

                source = paper_source(source)
            eval_sets[name] = items(source, "--eval", split=opts.split, seed=opts.seed)
        layout = model_options(opts)
        if layout is not None:
            for (name, ns), path in zip(sets.items(), opts.sets):
                try:
                    ns.validate(layout)
                except ValueError as exc:
                    raise ValueError(f"{path}: {exc} (model {opts.model})") from None
    output_dir(opts.out, files=(OVERLAP_JSON, OVERLAP_MD, OVERLAP_PNG))
    return OverlapInputs(sets, eval_sets)


def check_run(cfg: Any) -> None:
    """``culnig run`` / ``run_pipeline``: every number, the model, the run folder and the score tables already in it
    (they are reused). The data sources are read by ``run_pipeline`` itself, before the model and before anything is
    written."""
    option_checks.run_options(cfg)
    protocol(getattr(cfg, "protocol", "ours"))
    if getattr(cfg, "saq", None):
        if not Path(cfg.saq, "annotations").is_dir() or not Path(cfg.saq, "prompts").is_dir():
            raise ValueError(f"--saq {cfg.saq}: not a BLEnD folder (needs annotations/, questions/ and prompts/)")
    model_options(cfg)
    scores = Path(cfg.out) / "scores"
    for role in RUN_TABLES:
        path = scores / f"{role}.safetensors"
        if path.exists():
            try:
                score_table_header(path, f"{role} table")
            except (ValueError, OSError) as exc:
                raise ValueError(f"{exc}; delete {path} to score it again") from None


def check_sweep(cfg: Any) -> None:
    """``culnig sweep`` / ``run_sweep``: every number, the model and the output folder, before the data, the model
    or any write (the data sources are read by ``run_sweep`` before the model and before anything is written)."""
    option_checks.sweep_options(cfg)
    model_options(cfg)


__all__ = [
    "EvaluateInputs", "IdentifyInputs", "check_evaluate", "check_identify", "check_merge", "check_overlap",
    "check_export", "check_prompts", "check_report", "check_run", "check_score", "check_sweep", "device", "error_line", "finite",
    "fraction", "items", "model_layout", "neuron_set",
    "non_negative_int", "output_dir", "output_file", "positive_int", "same_layout", "score_table",
    "score_table_header",
]
