"""Studies compose the stages: run options defined once (``options``), the pipeline as stage functions
(``pipeline``), checks before anything loads (``preflight``), ``sweep``, ``compare``, ``overlap`` and the
fine-tuning study (``finetune``)."""
__all__ = ["options", "pipeline", "preflight", "sweep", "compare", "overlap", "finetune"]
