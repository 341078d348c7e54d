"""Intervention and evaluation: inhibit neurons with hooks (``inhibit``), multiple-choice evaluation
(``evaluate``), the cached-prompt cloze path (``cloze_cache``), short answers (``short_answers``) and the
lm-evaluation-harness bridge (``lmeval``)."""
__all__ = ["inhibit", "evaluate", "cloze_cache", "short_answers", "lmeval"]
