"""CULNIG beside LAPE (studies/lape_side.py): own group against the others from a kinship matrix written by hand,
the groups compared, and the sentence that names the more group-specific method (or neither)."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from culnig_ext.studies.lape_side import kinship_groups, own_vs_others, winner_sentence


def test_own_vs_others_by_hand():
    kin = SimpleNamespace(targets=["A", "B"], groups=["A", "B", "C"],
                          matrix=np.array([[0.30, 0.10, 0.00], [0.20, 0.05, 0.10]]))
    got = own_vs_others(kin)
    assert got["per_group"]["A"] == pytest.approx({"own": 0.30, "others": 0.05, "excess": 0.25})
    assert got["per_group"]["B"] == pytest.approx({"own": 0.05, "others": 0.15, "excess": -0.10})
    assert got["mean_excess"] == pytest.approx(0.075) and got["own_larger"] == 1 and got["groups"] == 2


def test_kinship_groups_are_the_methods_own():
    cfg = SimpleNamespace(kinship_groups=None, seed=0)
    sets = {"A": [1], "B": [], "C": [1, 2]}
    assert kinship_groups(cfg, ["A", "B", "C"], sets) == ["A", "C"]
    cfg.kinship_groups = 1
    (one,) = kinship_groups(cfg, ["A", "B", "C"], sets)
    assert one in ("A", "C")


def result(culnig, lape):
    sizes = {"CULNIG": {"A": 2, "B": 0}, "LAPE": {"A": 5, "B": 7}}
    return {"own_vs_others": {"CULNIG": culnig, "LAPE": lape}, "sizes": sizes}


def test_the_sentence_names_the_method_or_neither():
    flat = {"own_larger": 0, "groups": 2, "mean_excess": 0.0}
    text = winner_sentence(result(None, flat))
    assert text.startswith("CULNIG found neurons for 1 of 2 groups (2 neurons), too few groups to compare")
    assert "LAPE found neurons for 2 of 2 groups (12 neurons); its sets lower their own group's held-out accuracy " \
           "more than the other groups' in 0 of 2 groups compared (mean excess +0.0 points)" in text
    assert text.endswith("Neither method's sets are shown to be group-specific here: no inhibited set lowers its own "
                         "group more than the others (a reading of drops on the held-out items, without a "
                         "significance test per group).")
    better = {"own_larger": 1, "groups": 2, "mean_excess": 0.05}
    assert "**LAPE** finds the more group-specific neurons here, not CULNIG" in winner_sentence(result(flat, better))
    best = {"own_larger": 2, "groups": 2, "mean_excess": 0.01}
    assert "**CULNIG** finds the more" in winner_sentence(result(best, better))
    assert "neither finds more" in winner_sentence(result(better, dict(better)))
