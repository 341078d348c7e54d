"""Reporting: the run report (``report``: Markdown page, figures), the analyses it shows (``analysis``: kinship,
layer maps, the instance view) and the lines a run ends with (``summary``)."""
__all__ = ["report", "analysis", "plots", "summary"]
