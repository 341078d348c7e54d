"""Seeded random generators that depend only on their key, so an item's draw does not change when other items
(countries, questions) are added or removed, and does not depend on Python's salted ``hash``."""
from __future__ import annotations

import hashlib
import random


def stable_rng(*key: object) -> random.Random:
    """A ``random.Random`` seeded from the SHA-256 of the key parts (joined by a separator)."""
    digest = hashlib.sha256("\x1f".join(str(part) for part in key).encode("utf-8")).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))
