"""Score a set into a table file, or reuse the file when it was scored from the same items and provenance."""
from __future__ import annotations

import logging
from pathlib import Path

from culnig_ext.data.items import as_score_items
from culnig_ext.scoring.provenance import FIELDS, mismatch
from culnig_ext.scoring.scorer import dataset_fingerprint, score, table_provenance
from culnig_ext.scoring.table import ScoreTable

log = logging.getLogger("culnig")


def score_cached(
    path: Path, model, items, *, clamp_min: float | None, batch_size: int, progress: bool, desc: str,
    provenance: dict[str, str] | None = None, checkpoint: bool = False, checkpoint_every: int = 20,
    checkpoint_activations: bool = False,
) -> ScoreTable:
    """Score ``items`` into ``path``, or load ``path`` when it was scored from the same items with the same
    provenance (model, weights, dtype, attention, package version, prompt format, control, clamp); a table that
    differs in any of them is recomputed, naming the field. With ``checkpoint``, an interrupted scoring resumes
    from ``<path>.ckpt``."""
    checked = as_score_items(items)
    if path.is_file():
        table = ScoreTable.load(path)
        wanted = table_provenance(model, clamp_min, provenance)
        wanted["dataset_fingerprint"] = dataset_fingerprint(checked)
        diff = mismatch(table.metadata, wanted, ("dataset_fingerprint",) + FIELDS)
        if diff is None:
            log.info("%s: reusing %s (same items and provenance)", desc, path)
            return table
        field_name, was, now = diff
        log.info("%s: %s was scored with %s=%r, this run has %r: recomputing", desc, path, field_name, was, now)
    log.info("%s: scoring %d items", desc, len(checked))
    ckpt = Path(str(path) + ".ckpt") if checkpoint else None
    table = score(model, checked, batch_size=batch_size, clamp_min=clamp_min, progress=progress,
                  provenance=provenance, checkpoint=ckpt, checkpoint_every=checkpoint_every, keep_checkpoint=True,
                  checkpoint_activations=checkpoint_activations)
    table.save(path)
    if ckpt is not None:
        ckpt.unlink(missing_ok=True)
    # Continue with the table as saved: saving adds metadata (format, package version) that enters its fingerprint,
    # and the neuron sets' sources must name the files on disk, the same in a fresh run and in a resumed one.
    return ScoreTable.load(path)
