"""Scoring: one forward and one backward per batch, the per-neuron max over tokens of ``a * dP/da`` accumulated
per group (``scorer``), the resulting ``ScoreTable`` (``table``), its provenance, resume snapshots (``resume``) and
data-parallel scoring (``distributed``), torch's deterministic algorithms for a job (``determinism``)."""
__all__ = ["scorer", "table", "provenance", "resume", "distributed", "determinism"]
