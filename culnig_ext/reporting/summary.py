"""The few lines a run ends with: the verdict sentence, the neuron count, the main accuracy row, the run time, where
the outputs went and the next commands to try. Every number comes from the report's results (``ReportResults``)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from culnig_ext.reporting.report import ReportResults
from culnig_ext.stats.rows import AccuracyRow


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _points(x: float) -> str:
    return f"{100 * x:+.1f}"


def duration(seconds: float) -> str:
    """``7 min 5 s``, ``45 s``, ``1 h 2 min``."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, s = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {s} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


def main_row(results: ReportResults) -> AccuracyRow | None:
    """The row a run is about: the first cultural evaluation set (the held-out BLEnD-style items), else the first."""
    cultural = [r for r in results.rows if r.cultural]
    return cultural[0] if cultural else (results.rows[0] if results.rows else None)


def row_sentence(row: AccuracyRow) -> str:
    """``Cultural test (BLEnD-style), 96 items: original 25.0%, ours 27.1%, random 24.3% ± 1.0; ours − random +2.8
    points [−4.1, +9.7], MDE 9.4, p = 0.79``."""
    parts = [f"{row.eval_set}, {row.n_items} items: original {_pct(row.original)}, ours {_pct(row.inhibited)}"]
    if row.random_mean is not None:
        spread = f" ± {100 * row.random_sd:.1f}" if row.random_sd is not None else ""
        parts[0] += f", random {_pct(row.random_mean)}{spread}"
        diff = f"ours − random {_points(row.diff)} points"
        if row.diff_low is not None and row.diff_high is not None:
            diff += f" [{_points(row.diff_low)}, {_points(row.diff_high)}]"
        if row.mde is not None:
            diff += f", MDE {100 * row.mde:.1f}"
        if row.p_value is not None:
            diff += f", p = {row.p_value:.3g}"
            if row.p_holm is not None:
                diff += f" (Holm {row.p_holm:.3g})"
        parts.append(diff)
    return "; ".join(parts)


#: Commands longer than this do not push the other commands' comments to the right.
LONG_COMMAND = 60


def next_commands(run_dir: str | Path, *, full: bool | None) -> list[tuple[str, str]]:
    """What to try after a run into ``run_dir``: ``(command, what it does)`` pairs; ``full``: whether the run was
    the research-size study."""
    run_dir = Path(run_dir)
    out = []
    if full is False:
        out.append((f"culnig run --full --out {run_dir}-full", "the research-size study (its sizes: the report's "
                                                                "Study size and power)"))
    out.append((f"culnig report {run_dir}", "rebuild the report from results.json"))
    out.append((f"culnig run --config {run_dir / 'config.json'}", "repeat this run (its score tables are reused)"))
    planted = run_dir.parent / "planted"
    out.append((f"culnig plant --out {planted} && culnig validate {planted} --out {run_dir.parent / 'validation'}",
                "does the method find the right neurons? plant known ones, measure their recovery"))
    return out


def row_dict(row: AccuracyRow | None) -> dict[str, Any] | None:
    """The main row's numbers as a JSON object (``culnig run --json``)."""
    if row is None:
        return None
    return {k: getattr(row, k) for k in ("eval_set", "n_items", "original", "inhibited", "random", "diff_low",
                                         "diff_high", "mde", "p_value", "p_holm")}


def run_summary(results: ReportResults, *, seconds: float, specific: Mapping[str, int], run_dir: str | Path,
                paths: Mapping[str, str], next_commands: Sequence[tuple[str, str]], how: str = "") -> str:
    """The end of ``culnig run``'s output (module docstring).

    Args:
        results: the report's content.
        seconds: the run's time.
        specific: culture-specific neurons per group.
        run_dir: the run folder; paths: ``{label: path}`` of the outputs in it, in the order shown.
        next_commands: ``(command, what it does)`` pairs.
        how: said beside the time (``quick study, cloze format, protocol ours``).
    """
    lines = []
    if results.verdict is not None:
        lines.append(f"Verdict: {results.verdict['label']} — {results.verdict['reason']}.")
    study = results.neuron_set.split("-general")[0] if "-general" in results.neuron_set else "culture"
    counts = f"Neurons: {results.n_neurons} {study}-general"
    if results.layers is not None:
        by_kind = results.layers["counts"]
        counts += f" ({sum(by_kind['mlp'])} MLP gate, {sum(by_kind['attn'])} attention q/k/v)"
    with_neurons = [n for n in specific.values() if n]
    if specific:
        counts += (f"; {study}-specific in {len(with_neurons)} of {len(specific)} groups"
                   + (f" ({min(with_neurons)}-{max(with_neurons)} each)" if with_neurons else ""))
    lines.append(counts + ".")
    row = main_row(results)
    if row is not None:
        lines.append(f"Main result: {row_sentence(row)}.")
    lines.append(f"Run time: {duration(seconds)}" + (f" ({how})." if how else "."))
    width = max([10, *(len(label) for label in paths)])
    lines.append(f"Outputs in {run_dir}/:")
    lines += [f"  {label.ljust(width)} {path}" for label, path in paths.items()]
    if next_commands:
        lines.append("Next:")
        # the comments line up after the commands that fit in LONG_COMMAND characters; a longer one keeps its own
        width = max([len(c) for c, _ in next_commands if len(c) <= LONG_COMMAND] or [0])
        lines += [f"  {command.ljust(width)}  # {what}" for command, what in next_commands]
    return "\n".join(lines)
