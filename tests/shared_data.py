"""The reference data beside the repository (``../shared/data``: BLEnD's annotations, questions and prompts, the
CountryRC templates). Tests that read it carry ``needs_shared_data``: they skip, saying why, in a clone without it
(a user's checkout), and fail instead of skipping where ``CULNIG_REQUIRE_SHARED_DATA=1`` (CI, which has the data),
so that a missing copy can never hide them there."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
BLEND = SHARED_DATA / "blend"
COUNTRYRC = SHARED_DATA / "countryrc"

REQUIRED = os.environ.get("CULNIG_REQUIRE_SHARED_DATA") == "1"
PRESENT = BLEND.is_dir() and COUNTRYRC.is_dir()
if REQUIRED and not PRESENT:
    raise RuntimeError(f"CULNIG_REQUIRE_SHARED_DATA=1 but the reference data is not at {SHARED_DATA} "
                       "(needs blend/ and countryrc/)")

needs_shared_data = pytest.mark.skipif(
    not PRESENT, reason=f"needs the reference data at {SHARED_DATA} (../shared/data beside the repository: BLEnD "
                        "and CountryRC; CI has it)")
