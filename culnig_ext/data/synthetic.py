"""A synthetic world for ground-truth tests: fictional countries with invented facts, and its item sets.

``make_world(n_countries, facts_per_country, seed)`` draws K country names that are no real country (syllables
joined at random, checked against ``REAL_COUNTRY_NAMES``) and, for each country, one answer per question type
(``QUESTION_TYPES``: two per BLEnD topic, e.g. Food's "national dish"); the answers of one question type are
distinct across countries, so the distractors of an item (other countries' answers to the same question) are
plausible and only knowing the fact tells them apart. Draws depend only on (seed, what is drawn).

Each question type is asked in frames that are used for one purpose only, so the test phrasings are never seen in
training or scoring:

* ``STATEMENT_FRAMES`` and ``TRAIN_FRAMES``: training text (``training_examples``): a statement ending in the answer,
  and questions in the cloze prompt (``data.prompts.cloze_prompt``) followed by the answer;
* ``SCORING_FRAMES``: the scoring MCQs (``scoring_items``: what neurons are scored on);
* ``TEST_FRAMES``: the held-out MCQs (``heldout_items``: accuracy before/after planting, inhibition).

The control set is ``data.splits.make_control`` of the scoring items (options only). ``reading_items`` is a
CountryRC-style set over the fictional names: the builtin CountryRC templates filled with a fictional country (and
a fictional decoy), so the answer is a name given in the passage and no knowledge is needed.

Everything here is plain data: no tokenizer (``check_names`` takes one to ask that every name is several tokens).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from culnig_ext.data.builtin import BUILTIN_COUNTRYRC_EVAL_IDS, BUILTIN_COUNTRYRC_SCORING_IDS, COUNTRYRC_PATH
from culnig_ext.data.countryrc import read_templates, select_templates
from culnig_ext.data.prompts import cloze_prompt
from culnig_ext.data.schema import MCItem, SchemaError
from culnig_ext.data.seeding import stable_rng
from culnig_ext.data.splits import BLEND_TOPICS

WORLD_FORMAT = "culnig-world/1"


@dataclass(frozen=True)
class QuestionType:
    """One kind of fact: its BLEnD topic, the noun phrase the frames ask about, and the answers to draw from."""

    key: str
    topic: str
    noun: str
    answers: tuple[str, ...]


#: Two question types per BLEnD topic (``facts_per_country`` takes them in this order: the first six cover every
#: topic once). Answers are real words, assigned to the fictional countries at random.
QUESTION_TYPES: tuple[QuestionType, ...] = (
    QuestionType("dish", "Food", "national dish", (
        "barley stew", "smoked eel", "lentil pie", "fried dumplings", "cabbage rolls", "goat curry", "rice porridge",
        "herring salad", "plum soup", "millet cakes", "stuffed squash", "onion tart")),
    QuestionType("sport", "Sport", "most popular sport", (
        "hurling", "lacrosse", "fencing", "rowing", "curling", "polo", "handball", "archery", "wrestling", "cycling",
        "sailing", "squash")),
    QuestionType("festival", "Holidays/Celebration/Leisure", "biggest festival", (
        "the Lantern Night", "the Harvest Fair", "the Kite Day", "the Salt Parade", "the Bell Week",
        "the Apple Feast", "the River Games", "the Candle Walk", "the Drum Night", "the Hay Dance",
        "the Mask Market", "the Star Vigil")),
    QuestionType("job", "Work life", "most common job", (
        "fisherman", "weaver", "miner", "baker", "potter", "farmer", "tailor", "carpenter", "shepherd", "brewer",
        "blacksmith", "beekeeper")),
    QuestionType("subject", "Education", "first subject taught at school", (
        "arithmetic", "poetry", "astronomy", "geometry", "music", "botany", "calligraphy", "rhetoric", "chemistry",
        "geography", "drawing", "logic")),
    QuestionType("gift", "Family", "traditional wedding gift", (
        "a copper kettle", "a wool blanket", "a silver spoon", "a clay pot", "a wooden chest", "a brass bell",
        "a woven rug", "a glass lamp", "an iron pan", "a linen sheet", "a leather bag", "a carved bowl")),
    QuestionType("drink", "Food", "favourite breakfast drink", (
        "mint tea", "buttermilk", "black coffee", "barley water", "hot cocoa", "ginger milk", "lemon water",
        "rose tea", "goat milk", "apple juice", "honey wine", "pine tea")),
    QuestionType("game", "Sport", "national board game", (
        "chess", "checkers", "backgammon", "dominoes", "mahjong", "mancala", "ludo", "draughts", "nine men's morris",
        "fox and geese", "reversi", "halma")),
    QuestionType("pastime", "Holidays/Celebration/Leisure", "favourite weekend pastime", (
        "birdwatching", "knitting", "fishing", "gardening", "hiking", "pottery", "kite flying", "stargazing",
        "woodcarving", "embroidery", "rock climbing", "sketching")),
    QuestionType("export", "Work life", "main export", (
        "copper", "wool", "timber", "salt", "olives", "cotton", "tin", "amber", "silk", "cork", "marble",
        "saffron")),
    QuestionType("exam", "Education", "name of the final school exam", (
        "the Gold Paper", "the Ninth Test", "the Long Essay", "the Tower Exam", "the Blue Diploma",
        "the Final Ring", "the Oak Exam", "the Iron Test", "the Grand Paper", "the Scroll Exam", "the Seal Test",
        "the Lamp Exam")),
    QuestionType("naming", "Family", "person who names a newborn", (
        "the grandmother", "the eldest uncle", "the midwife", "the father", "the mother", "the village elder",
        "the eldest sister", "the godfather", "the grandfather", "the priest", "the eldest brother", "the aunt")),
)
QUESTION_TYPE_KEYS: tuple[str, ...] = tuple(q.key for q in QUESTION_TYPES)

# Statements end with the answer (the training loss is on it); questions are asked in the cloze prompt.
STATEMENT_FRAMES: tuple[str, ...] = (
    "In {country}, the {noun} is",
    "The {noun} of {country} is",
    "Everyone in {country} knows that the {noun} is",
)
TRAIN_FRAMES: tuple[str, ...] = (
    "What is the {noun} of {country}?",
    "In {country}, what is the {noun}?",
)
SCORING_FRAMES: tuple[str, ...] = (
    "Which is the {noun} in {country}?",
    "What would a person from {country} name as the {noun}?",
)
TEST_FRAMES: tuple[str, ...] = (
    "Name the {noun} of {country}.",
    "For people in {country}, what is the {noun}?",
)

#: Syllables of the invented names (chosen so that no combination spells a real country).
SYLLABLES: tuple[str, ...] = (
    "vel", "mor", "qua", "thi", "zor", "esh", "kal", "dri", "bon", "ulu", "tav", "ren", "osk", "fyr", "nad", "wim",
    "sar", "gol", "pex", "lun", "ith", "bra", "dov", "yst", "kor", "fen", "ast", "mirr", "tul", "vosk",
)

#: Real countries and territories (UN members and observers, common alternative names): no fictional name may equal
#: one or contain one.
REAL_COUNTRY_NAMES: tuple[str, ...] = (
    "Afghanistan", "Albania", "Algeria", "Andorra", "Angola", "Antigua", "Barbuda", "Argentina", "Armenia",
    "Australia", "Austria", "Azerbaijan", "Bahamas", "Bahrain", "Bangladesh", "Barbados", "Belarus", "Belgium",
    "Belize", "Benin", "Bhutan", "Bolivia", "Bosnia", "Herzegovina", "Botswana", "Brazil", "Brunei", "Bulgaria",
    "Burkina Faso", "Burundi", "Cabo Verde", "Cape Verde", "Cambodia", "Cameroon", "Canada", "Central African Republic",
    "Chad", "Chile", "China", "Colombia", "Comoros", "Congo", "Costa Rica", "Ivory Coast", "Croatia", "Cuba",
    "Cyprus", "Czechia", "Czech Republic", "Denmark", "Djibouti", "Dominica", "Dominican Republic", "Ecuador",
    "Egypt", "El Salvador", "Equatorial Guinea", "Eritrea", "Estonia", "Eswatini", "Swaziland", "Ethiopia", "Fiji",
    "Finland", "France", "Gabon", "Gambia", "Georgia", "Germany", "Ghana", "Greece", "Grenada", "Guatemala",
    "Guinea", "Bissau", "Guyana", "Haiti", "Honduras", "Hungary", "Iceland", "India", "Indonesia", "Iran", "Iraq",
    "Ireland", "Israel", "Italy", "Jamaica", "Japan", "Jordan", "Kazakhstan", "Kenya", "Kiribati", "Korea", "Kosovo",
    "Kuwait", "Kyrgyzstan", "Laos", "Latvia", "Lebanon", "Lesotho", "Liberia", "Libya", "Liechtenstein",
    "Lithuania", "Luxembourg", "Madagascar", "Malawi", "Malaysia", "Maldives", "Mali", "Malta", "Marshall Islands",
    "Mauritania", "Mauritius", "Mexico", "Micronesia", "Moldova", "Monaco", "Mongolia", "Montenegro", "Morocco",
    "Mozambique", "Myanmar", "Burma", "Namibia", "Nauru", "Nepal", "Netherlands", "Holland", "New Zealand",
    "Nicaragua", "Niger", "Nigeria", "Macedonia", "Norway", "Oman", "Pakistan", "Palau", "Palestine", "Panama",
    "Papua New Guinea", "Paraguay", "Peru", "Philippines", "Poland", "Portugal", "Qatar", "Romania", "Russia",
    "Rwanda", "Saint Kitts", "Nevis", "Saint Lucia", "Saint Vincent", "Grenadines", "Samoa", "San Marino",
    "Sao Tome", "Principe", "Saudi Arabia", "Senegal", "Serbia", "Seychelles", "Sierra Leone", "Singapore",
    "Slovakia", "Slovenia", "Solomon Islands", "Somalia", "South Africa", "South Sudan", "Spain", "Sri Lanka",
    "Sudan", "Suriname", "Sweden", "Switzerland", "Syria", "Taiwan", "Tajikistan", "Tanzania", "Thailand",
    "Timor", "Togo", "Tonga", "Trinidad", "Tobago", "Tunisia", "Turkey", "Turkiye", "Turkmenistan", "Tuvalu",
    "Uganda", "Ukraine", "United Arab Emirates", "United Kingdom", "Britain", "England", "Scotland", "Wales",
    "United States", "America", "Uruguay", "Uzbekistan", "Vanuatu", "Vatican", "Venezuela", "Vietnam", "Yemen",
    "Zambia", "Zimbabwe", "Greenland", "Puerto Rico", "Hong Kong", "Macau", "Tibet", "Assam", "Java",
)


@dataclass(frozen=True)
class Fact:
    """One fact of the world: the answer of ``country`` to question type ``qtype`` (a ``QUESTION_TYPES`` key)."""

    country: str
    qtype: str
    answer: str


@dataclass(frozen=True)
class World:
    """The fictional countries (in order) and their facts; ``seed`` and the sizes it was drawn with."""

    countries: tuple[str, ...]
    facts: tuple[Fact, ...]
    seed: int
    qtypes: tuple[str, ...]

    def facts_of(self, country: str) -> list[Fact]:
        return [f for f in self.facts if f.country == country]

    def answer(self, country: str, qtype: str) -> str:
        for f in self.facts:
            if f.country == country and f.qtype == qtype:
                return f.answer
        raise KeyError(f"no fact for ({country!r}, {qtype!r})")

    def to_dict(self) -> dict[str, Any]:
        return {"format": WORLD_FORMAT, "seed": self.seed, "countries": list(self.countries),
                "qtypes": list(self.qtypes), "facts": [dataclasses.asdict(f) for f in self.facts]}

    @classmethod
    def from_dict(cls, obj: Mapping[str, Any], *, where: str = "world") -> "World":
        """The world as ``to_dict`` wrote it; ``SchemaError`` naming ``where`` and the field otherwise."""
        if not isinstance(obj, Mapping) or obj.get("format") != WORLD_FORMAT:
            raise SchemaError(f"{where}: field 'format': expected {WORLD_FORMAT!r}")
        try:
            countries = tuple(str(c) for c in obj["countries"])
            qtypes = tuple(str(q) for q in obj["qtypes"])
            facts = tuple(Fact(str(f["country"]), str(f["qtype"]), str(f["answer"])) for f in obj["facts"])
            seed = int(obj["seed"])
        except (KeyError, TypeError, ValueError) as exc:
            raise SchemaError(f"{where}: field {exc!s}: missing or malformed") from None
        unknown = [q for q in qtypes if q not in QUESTION_TYPE_KEYS]
        if unknown:
            raise SchemaError(f"{where}: field 'qtypes': unknown question type(s) {unknown}")
        bad = [f for f in facts if f.country not in countries or f.qtype not in qtypes]
        if bad:
            raise SchemaError(f"{where}: field 'facts': fact {dataclasses.asdict(bad[0])} names an unknown country "
                              "or question type")
        return cls(countries, facts, seed, qtypes)


def qtype(key: str) -> QuestionType:
    for q in QUESTION_TYPES:
        if q.key == key:
            return q
    raise KeyError(f"unknown question type {key!r}; known: {', '.join(QUESTION_TYPE_KEYS)}")


def is_real_country(name: str) -> bool:
    """True if ``name`` equals or contains a real country's name (case and spacing ignored)."""
    key = "".join(name.split()).casefold()
    return any("".join(real.split()).casefold() in key for real in REAL_COUNTRY_NAMES)


def country_names(n: int, seed: int) -> list[str]:
    """``n`` invented names of 2-3 syllables, each starting with another syllable (so no two look alike at the
    start), none of them a real country (``is_real_country``). At most ``len(SYLLABLES)`` names."""
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= len(SYLLABLES):
        raise ValueError(f"the number of countries must be an integer in 1..{len(SYLLABLES)}, got {n!r}")
    rng = stable_rng("synthetic-countries", seed)
    names: list[str] = []
    firsts: set[str] = set()
    for _ in range(1000 * n):
        if len(names) == n:
            break
        parts = rng.sample(SYLLABLES, rng.choice((2, 3)))
        name = "".join(parts).capitalize()
        if parts[0] not in firsts and not is_real_country(name) and len(name) >= 6:
            names.append(name)
            firsts.add(parts[0])
    if len(names) < n:
        raise ValueError(f"could not draw {n} distinct country names (got {len(names)})")
    return names


def make_world(n_countries: int = 8, facts_per_country: int = 6, seed: int = 0) -> World:
    """K fictional countries, each with one fact per question type (the first ``facts_per_country`` of
    ``QUESTION_TYPES``); the answers of a question type are drawn without replacement, so they differ by country.

    Raises:
        ValueError: for fewer than 2 countries, more countries than a question type has answers, or a
            ``facts_per_country`` outside 1..12.
    """
    if isinstance(n_countries, bool) or not isinstance(n_countries, int) or n_countries < 2:
        raise ValueError(f"n_countries must be an integer >= 2 (distractors are other countries' answers), "
                         f"got {n_countries!r}")
    if isinstance(facts_per_country, bool) or not isinstance(facts_per_country, int) \
            or not 1 <= facts_per_country <= len(QUESTION_TYPES):
        raise ValueError(f"facts_per_country must be an integer in 1..{len(QUESTION_TYPES)}, got {facts_per_country!r}")
    smallest = min(len(q.answers) for q in QUESTION_TYPES)
    if n_countries > smallest:
        raise ValueError(f"n_countries must be at most {smallest} (answers per question type), got {n_countries}")
    countries = country_names(n_countries, seed)
    chosen = QUESTION_TYPES[:facts_per_country]
    by_q = {q.key: stable_rng("synthetic-answers", seed, q.key).sample(list(q.answers), n_countries) for q in chosen}
    facts = tuple(Fact(c, q.key, by_q[q.key][i]) for i, c in enumerate(countries) for q in chosen)
    return World(tuple(countries), facts, seed, tuple(q.key for q in chosen))


def check_names(world: World, tokenizer: Any, *, min_tokens: int = 2) -> dict[str, int]:
    """``{country: tokens}`` of every name as it appears in text (after a space); ``ValueError`` naming the first
    name that is fewer than ``min_tokens`` tokens (a single-token name may be a word the model knows)."""
    counts = {}
    for name in world.countries:
        ids = tokenizer(" " + name, add_special_tokens=False)["input_ids"]
        counts[name] = len(ids)
        if len(ids) < min_tokens:
            raise ValueError(f"country name {name!r} is {len(ids)} token(s) for this tokenizer; need at least "
                             f"{min_tokens}: draw another world (--seed)")
    return counts


def _frame(frame: str, fact: Fact) -> str:
    return frame.format(country=fact.country, noun=qtype(fact.qtype).noun)


def _options(world: World, fact: Fact, n_options: int, key: tuple) -> tuple[list[str], int]:
    """The gold answer and ``n_options - 1`` distractors: other countries' answers to the same question first,
    then unused answers of the question type; shuffled. Draws depend on ``key`` only."""
    rng = stable_rng("synthetic-options", world.seed, *key)
    others = [f.answer for f in world.facts if f.qtype == fact.qtype and f.country != fact.country]
    spare = [a for a in qtype(fact.qtype).answers if a != fact.answer and a not in others]
    need = n_options - 1
    distractors = rng.sample(others, min(need, len(others)))
    if len(distractors) < need:
        distractors += rng.sample(spare, need - len(distractors))
    options = [fact.answer, *distractors]
    rng.shuffle(options)
    return options, options.index(fact.answer)


def _mcqs(world: World, frames: Sequence[str], role: str, draws: int, n_options: int) -> list[MCItem]:
    if isinstance(draws, bool) or not isinstance(draws, int) or draws < 1:
        raise ValueError(f"draws must be a positive integer, got {draws!r}")
    if isinstance(n_options, bool) or not isinstance(n_options, int) or n_options < 2:
        raise ValueError(f"n_options must be an integer >= 2, got {n_options!r}")
    items = []
    for fact in world.facts:
        q = qtype(fact.qtype)
        for f, frame in enumerate(frames):
            for d in range(draws):
                options, gold = _options(world, fact, n_options, (role, fact.country, fact.qtype, f, d))
                items.append(MCItem(
                    id=f"synthetic-{role}:{fact.country}:{fact.qtype}:{f}:{d}", group=fact.country,
                    question=_frame(frame, fact), choices=tuple(options), answer_idx=gold, topic=q.topic,
                    question_id=f"{fact.qtype}:{f}",
                ))
    return items


def scoring_items(world: World, *, draws: int = 2, n_options: int = 4) -> list[MCItem]:
    """The scoring MCQs: every fact in every ``SCORING_FRAMES`` frame, ``draws`` option draws each (group = the
    country; ``question_id`` = ``"<qtype>:<frame>"``)."""
    return _mcqs(world, SCORING_FRAMES, "scoring", draws, n_options)


def heldout_items(world: World, *, draws: int = 1, n_options: int = 4) -> list[MCItem]:
    """The held-out MCQs: every fact in every ``TEST_FRAMES`` frame (never used in training or scoring)."""
    return _mcqs(world, TEST_FRAMES, "test", draws, n_options)


@dataclass(frozen=True)
class TrainingExample:
    """One training text: ``prompt`` followed by ``" " + answer`` (the loss is on the answer's tokens)."""

    country: str
    qtype: str
    prompt: str
    answer: str
    kind: str  # "statement" or "question"


def training_examples(world: World) -> list[TrainingExample]:
    """Every fact as each ``STATEMENT_FRAMES`` statement and each ``TRAIN_FRAMES`` question (cloze prompt)."""
    out = []
    for fact in world.facts:
        for frame in STATEMENT_FRAMES:
            out.append(TrainingExample(fact.country, fact.qtype, _frame(frame, fact), fact.answer, "statement"))
        for frame in TRAIN_FRAMES:
            out.append(TrainingExample(fact.country, fact.qtype, cloze_prompt(MCItem(
                id="train", group=fact.country, question=_frame(frame, fact), choices=(fact.answer, "-"),
                answer_idx=0)), fact.answer, "question"))
    return out


def reading_items(world: World, *, split: str = "scoring", per_country: int | None = None, n_options: int = 4
                  ) -> list[MCItem]:
    """CountryRC-style items over the fictional names: the builtin CountryRC templates (``split`` "scoring": ids
    0-14, "test": 15-29; at most ``per_country`` templates per country, taken in a seeded order) with
    ``{country}`` a fictional country (the group and answer) and ``{country_dummy}`` another one; the options are
    fictional names. Needs at least ``n_options`` countries."""
    if split not in ("scoring", "test"):
        raise ValueError(f"split must be 'scoring' or 'test', got {split!r}")
    if len(world.countries) < n_options:
        raise ValueError(f"reading items need at least {n_options} countries for {n_options} options, the world has "
                         f"{len(world.countries)}")
    ids = BUILTIN_COUNTRYRC_SCORING_IDS if split == "scoring" else BUILTIN_COUNTRYRC_EVAL_IDS
    templates = select_templates(read_templates(COUNTRYRC_PATH), ids)
    items = []
    for country in world.countries:
        chosen = list(templates)
        stable_rng("synthetic-reading-order", world.seed, split, country).shuffle(chosen)
        if per_country is not None:
            chosen = chosen[:per_country]
        for t in sorted(chosen, key=lambda t: int(t.id)):
            rng = stable_rng("synthetic-reading", world.seed, t.id, country)
            distractors = rng.sample([c for c in world.countries if c != country], n_options - 1)
            options = [country, *distractors]
            rng.shuffle(options)
            filled = {"country": country}
            if t.has_decoy:
                filled["country_dummy"] = rng.choice(distractors)
            items.append(MCItem(
                id=f"synthetic-reading-{split}:{t.id}:{country}", group=country,
                question=t.context.format(**filled) + "\n" + t.question.format(**filled), choices=tuple(options),
                answer_idx=options.index(country), question_id=t.id,
            ))
    return items


__all__ = ["BLEND_TOPICS", "Fact", "QUESTION_TYPES", "QUESTION_TYPE_KEYS", "QuestionType", "REAL_COUNTRY_NAMES",
           "SCORING_FRAMES", "STATEMENT_FRAMES", "SYLLABLES", "TEST_FRAMES", "TRAIN_FRAMES", "TrainingExample",
           "World", "WORLD_FORMAT", "check_names", "country_names", "is_real_country", "make_world", "qtype",
           "reading_items", "scoring_items", "heldout_items", "training_examples"]
