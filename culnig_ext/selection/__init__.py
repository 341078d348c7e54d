"""Selection: CULNIG's culture-general and culture-specific neurons and random baselines (``culnig``), the
``NeuronSet`` type and file format (``neurons``), stability of a selection, and LAPE's activation-probability
neurons for comparison (``lape``)."""
__all__ = ["culnig", "neurons", "stability", "lape"]
