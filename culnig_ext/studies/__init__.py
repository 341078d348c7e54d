"""Studies compose the stages: run options defined once (``options``, ``config``), the pipeline as stage functions
(``pipeline``), its plan and time estimate (``plan``) and overall progress line (``progress``), the format test
(``format_probe``), checks before anything loads (``option_checks`` without torch, then ``preflight``), ``sweep``,
``compare``, ``overlap`` and the fine-tuning study (``finetune``)."""
__all__ = ["options", "config", "pipeline", "plan", "progress", "format_probe", "option_checks", "preflight", "sweep",
           "compare", "overlap", "conditions", "finetune"]
