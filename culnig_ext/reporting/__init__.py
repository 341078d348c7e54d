"""Reporting: the run report (``report``: Markdown page, figures) and the analyses it shows (``analysis``:
kinship, layer maps, the instance view)."""
__all__ = ["report", "analysis"]
