"""Country names: BLEnD's names are the group names everywhere; readable display names for prompts.

Group names follow BLEnD's file names (``South_Korea``, ``Northern_Nigeria``). Other data sets spell countries
differently (``united_states_of_america`` in NormAd, ``United States`` in CulturalBench, ``Great Britain`` in the
World Values Survey); ``canonical_country`` maps them onto BLEnD's names so groups line up across data sets.
"""
from __future__ import annotations

from typing import Iterable, Sequence

#: The 16 BLEnD countries/regions, in BLEnD's order.
BLEND_COUNTRIES: tuple[str, ...] = (
    "US", "UK", "South_Korea", "Algeria", "Indonesia", "Spain", "Iran", "Mexico",
    "Assam", "Greece", "Ethiopia", "Northern_Nigeria", "North_Korea", "West_Java", "China", "Azerbaijan",
)

#: Readable names used inside prompts (questions, CountryRC options). Names not listed read as the group name
#: with underscores replaced by spaces.
DISPLAY_NAMES: dict[str, str] = {
    "US": "the United States",
    "UK": "the United Kingdom",
    "South_Korea": "South Korea",
    "Northern_Nigeria": "Northern Nigeria",
    "North_Korea": "North Korea",
    "West_Java": "West Java",
}

# Spellings used by other data sets (compared after lower-casing and turning '_' into ' ').
_ALIASES: dict[str, str] = {
    "us": "US", "usa": "US", "u.s.": "US", "u.s.a.": "US", "united states": "US", "the united states": "US",
    "united states of america": "US", "the united states of america": "US", "america": "US",
    "uk": "UK", "u.k.": "UK", "united kingdom": "UK", "the united kingdom": "UK", "great britain": "UK",
    "britain": "UK",
    "south korea": "South_Korea", "korea, south": "South_Korea", "republic of korea": "South_Korea",
    "korea, republic of": "South_Korea",
    "north korea": "North_Korea", "korea, north": "North_Korea",
    "northern nigeria": "Northern_Nigeria",
    "west java": "West_Java",
}
for _name in BLEND_COUNTRIES:
    _ALIASES.setdefault(_name.lower().replace("_", " "), _name)


def display_name(group: str) -> str:
    """The readable name of a group for prompts, e.g. ``"South_Korea"`` -> ``"South Korea"``."""
    return DISPLAY_NAMES.get(group, group.replace("_", " "))


def canonical_country(name: str) -> str:
    """Map a country spelling onto BLEnD's group name when it is one of BLEnD's 16; otherwise return a
    normalised group name (words capitalised where they were all lower case, joined by ``_``).

    Examples: ``"united_states_of_america"`` -> ``"US"``, ``"Great Britain"`` -> ``"UK"``,
    ``"zimbabwe"`` -> ``"Zimbabwe"``, ``"Sri Lanka"`` -> ``"Sri_Lanka"``.
    """
    words = name.replace("_", " ").split()
    if not words:
        raise ValueError(f"empty country name {name!r}")
    key = " ".join(words).lower()
    if key in _ALIASES:
        return _ALIASES[key]
    return "_".join(w.capitalize() if w.islower() else w for w in words)


def resolve_countries(names: Iterable[str], *, known: Sequence[str], what: str = "countries") -> list[str]:
    """Map user-given country names onto group names and check each is one of ``known``.

    Raises:
        ValueError: naming the unknown country and listing the accepted ones.
    """
    if isinstance(names, str):
        raise TypeError(f"{what} must be a list of names, not the string {names!r}")
    out: list[str] = []
    for name in names:
        group = canonical_country(name)
        if group not in known:
            raise ValueError(f"{what}: unknown country {name!r}; accepted: {', '.join(known)}")
        if group not in out:
            out.append(group)
    if not out:
        raise ValueError(f"{what}: empty list")
    return out
