"""NeuronSet: a selected set of neurons (site, index, score), its JSON file format and set algebra.

A neuron is one output channel of a site (``layers.{i}.mlp.gate_proj`` or ``layers.{i}.self_attn.{q,k,v}_proj``,
see ``culnig_ext.models.sites``). A set is kept in *site order* — by layer, then gate, q, k, v inside a layer — then by
index, so two sets with the same neurons iterate identically whatever order they were built in. That order is the
column order of ``scorer.item_scores`` and of anything else that lays a set's neurons out side by side.

File format (JSON, written atomically)::

    {"format": "culnig-neurons/1", "method": "general", "params": {...}, "model": "...",
     "sources": {"neur": "<ScoreTable fingerprint>", ...},
     "neurons": [{"site": "layers.0.mlp.gate_proj", "index": 17, "score": 0.25}, ...]}
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

import torch
from torch import nn

from culnig_ext._utils.atomic import atomic_write_text
from culnig_ext.models.sites import ATTN, KINDS, MLP, neuron_sites, parse_site_name
from culnig_ext.scoring.table import ScoreTable
from culnig_ext._utils.textfile import describe_utf8_error
from culnig_ext.data.frames import neurons_from_pandas, neurons_html, neurons_to_pandas

FORMAT_VERSION = "culnig-neurons/1"

# Rank of each projection inside a layer: gate first, then q, k, v (the order of ``sites.neuron_sites``).
_PROJ_RANK = {"mlp.gate_proj": 0, "self_attn.q_proj": 1, "self_attn.k_proj": 2, "self_attn.v_proj": 3}
_TOP_KEYS = ("format", "method", "params", "model", "sources", "neurons")
_NEURON_KEYS = ("site", "index", "score")


def site_key(site: str) -> tuple[int, ...]:
    """Sort key of a site name: ``(layer, rank)`` with rank gate=0, q=1, k=2, v=3; a mixture-of-experts layer's
    gates sort as ``(layer, 0, expert)``, its shared expert after them. Refuses a non-site name."""
    layer, _ = parse_site_name(site)
    proj = site.split(".", 2)[2]
    if proj.startswith("mlp.experts."):
        return layer, 0, int(proj.split(".")[2])
    if proj == "mlp.shared_expert.gate_proj":
        return layer, 0, 1 << 30
    return layer, _PROJ_RANK[proj]


def site_widths(source: nn.Module | ScoreTable | Mapping[str, int]) -> dict[str, int]:
    """``{site name: width}`` in site order, from a model (via ``sites.neuron_sites``), a ``ScoreTable`` (the
    tables' second dimension) or a ``{site: width}`` mapping (names and widths checked)."""
    if isinstance(source, ScoreTable):
        raw = {site: int(source[site].shape[1]) for site in source.sites}
    elif isinstance(source, nn.Module):
        raw = {site.name: int(site.width) for site in neuron_sites(source)}
    elif isinstance(source, Mapping):
        raw = {}
        for site, width in source.items():
            site_key(site)  # raises ValueError naming a bad site name
            if isinstance(width, bool) or not isinstance(width, int) or width < 0:
                raise ValueError(f"width of site {site!r} must be a non-negative int, got {width!r}")
            raw[site] = width
    else:
        raise TypeError(
            f"widths must be a model (nn.Module), a ScoreTable or a {{site: width}} dict, got {type(source).__name__}"
        )
    return {site: raw[site] for site in sorted(raw, key=site_key)}


@dataclass(frozen=True)
class Neuron:
    """One neuron: ``site`` name, channel ``index`` inside the site, and the ``score`` it was selected by."""

    site: str
    index: int
    score: float = 0.0


def _check_neuron(neuron: Any, where: str) -> Neuron:
    if not isinstance(neuron, Neuron):
        raise TypeError(f"{where}: expected a Neuron, got {type(neuron).__name__}")
    try:
        site_key(neuron.site)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{where}: {exc}") from None
    if isinstance(neuron.index, bool) or not isinstance(neuron.index, int) or neuron.index < 0:
        raise ValueError(f"{where}: index must be a non-negative int, got {neuron.index!r}")
    score = neuron.score
    if isinstance(score, bool) or not isinstance(score, (int, float)) or not math.isfinite(score):
        raise ValueError(f"{where}: score must be a finite number, got {score!r}")
    return Neuron(neuron.site, int(neuron.index), float(score))


def _check_meta(method: Any, params: Any, model: Any, sources: Any, where: str = "") -> tuple:
    prefix = f"{where}: " if where else ""
    if not isinstance(method, str):
        raise ValueError(f"{prefix}field 'method' must be a string, got {type(method).__name__}")
    if not isinstance(model, str):
        raise ValueError(f"{prefix}field 'model' must be a string, got {type(model).__name__}")
    if not isinstance(params, Mapping) or not all(isinstance(k, str) for k in params):
        raise ValueError(f"{prefix}field 'params' must be an object with string keys, got {params!r}")
    try:
        # Params are written to JSON; refuse what cannot be written now, not at save time.
        params = json.loads(json.dumps(dict(params), allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{prefix}field 'params' is not JSON-serialisable ({exc})") from None
    if not isinstance(sources, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in sources.items()
    ):
        raise ValueError(f"{prefix}field 'sources' must be an object of strings (fingerprints), got {sources!r}")
    return method, params, model, dict(sources)


class NeuronSet:
    """An ordered set of neurons with the provenance of the selection.

    Iterates ``Neuron`` in site order (layer, then gate/q/k/v) then index; ``(site, index) in s`` tests membership.
    Two sets are ``==`` when they hold the same neurons with the same scores and the same metadata.

    Args:
        neurons: ``Neuron`` objects, in any order; a repeated ``(site, index)`` is refused.
        method: how the set was made (``"general"``, ``"specific"``, ``"random"``, ...).
        params: the selection's parameters (JSON-serialisable).
        model: the model the scores came from.
        sources: ``{role: fingerprint}`` of the score files the set came from.
    """

    def __init__(
        self,
        neurons: Iterable[Neuron],
        *,
        method: str = "",
        params: Mapping[str, Any] | None = None,
        model: str = "",
        sources: Mapping[str, str] | None = None,
    ) -> None:
        checked = [_check_neuron(n, f"neuron {i}") for i, n in enumerate(neurons)]
        checked.sort(key=lambda n: (site_key(n.site), n.index))
        for prev, cur in zip(checked, checked[1:]):
            if (prev.site, prev.index) == (cur.site, cur.index):
                raise ValueError(f"duplicate neuron ({cur.site!r}, {cur.index}) in NeuronSet")
        self._neurons: tuple[Neuron, ...] = tuple(checked)
        self._keys = {(n.site, n.index): n for n in self._neurons}
        self.method, self.params, self.model, self.sources = _check_meta(
            method, {} if params is None else params, model, {} if sources is None else sources
        )

    @classmethod
    def from_pairs(cls, pairs: Iterable[tuple], **meta: Any) -> "NeuronSet":
        """Build from ``(site, index)`` pairs (score 0.0) or ``(site, index, score)`` triples; ``meta`` as in
        the constructor."""
        neurons = []
        for i, pair in enumerate(pairs):
            if not isinstance(pair, (tuple, list)) or len(pair) not in (2, 3):
                raise ValueError(f"pair {i}: expected (site, index) or (site, index, score), got {pair!r}")
            neurons.append(Neuron(*pair))
        return cls(neurons, **meta)

    # ----------------------------------------------------------------------------------------------- views
    def __iter__(self) -> Iterator[Neuron]:
        return iter(self._neurons)

    def __len__(self) -> int:
        return len(self._neurons)

    def __getitem__(self, position: int) -> Neuron:
        return self._neurons[position]

    def __contains__(self, key: object) -> bool:
        if isinstance(key, Neuron):
            key = (key.site, key.index)
        return key in self._keys

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, NeuronSet):
            return NotImplemented
        return (self._neurons, self.method, self.params, self.model, self.sources) == (
            other._neurons, other.method, other.params, other.model, other.sources
        )

    __hash__ = None  # mutable metadata; not hashable

    def __repr__(self) -> str:
        kinds = ", ".join(f"{k}={v}" for k, v in self.counts_by_kind().items())
        return f"NeuronSet({len(self)} neurons: {kinds}; method={self.method!r}, model={self.model!r})"

    @property
    def pairs(self) -> list[tuple[str, int]]:
        """``(site, index)`` of every neuron, in set order."""
        return [(n.site, n.index) for n in self._neurons]

    def score(self, site: str, index: int) -> float:
        """The score of neuron ``(site, index)``; KeyError if it is not in the set."""
        try:
            return self._keys[(site, index)].score
        except KeyError:
            raise KeyError(f"neuron ({site!r}, {index}) is not in this set") from None

    @property
    def sites(self) -> list[str]:
        """Names of the sites that hold at least one neuron of the set, in site order."""
        return list(dict.fromkeys(n.site for n in self._neurons))

    def by_site(self) -> dict[str, torch.Tensor]:
        """``{site: LongTensor[k]}`` of sorted unique indices per site, sites in site order (only non-empty)."""
        out: dict[str, list[int]] = {}
        for n in self._neurons:
            out.setdefault(n.site, []).append(n.index)
        return {site: torch.tensor(idx, dtype=torch.int64) for site, idx in out.items()}

    def counts_by_layer(self) -> dict[tuple[int, str], int]:
        """``{(layer, kind): count}`` for the (layer, kind) pairs that hold neurons, in layer order, mlp first."""
        out: dict[tuple[int, str], int] = {}
        for n in self._neurons:
            key = parse_site_name(n.site)
            out[key] = out.get(key, 0) + 1
        return dict(sorted(out.items(), key=lambda kv: (kv[0][0], KINDS.index(kv[0][1]))))

    def counts_by_kind(self) -> dict[str, int]:
        """``{"mlp": count, "attn": count}`` (both kinds always present, 0 when none)."""
        out = {kind: 0 for kind in KINDS}
        for n in self._neurons:
            out[parse_site_name(n.site)[1]] += 1
        return out

    def of_kind(self, kind: str) -> "NeuronSet":
        """The neurons of one kind (``"mlp"`` or ``"attn"``), same metadata."""
        if kind not in KINDS:
            raise ValueError(f"unknown kind {kind!r}; expected one of {KINDS}")
        return self._derive([n for n in self._neurons if parse_site_name(n.site)[1] == kind])

    def validate(self, widths: nn.Module | ScoreTable | Mapping[str, int]) -> "NeuronSet":
        """Check every neuron against a model / ScoreTable / ``{site: width}``: the site must exist and the
        index be below its width. Returns ``self``; raises ValueError naming the site otherwise."""
        known = site_widths(widths)
        for site, indices in self.by_site().items():
            if site not in known:
                raise ValueError(f"site {site!r} of this neuron set is not a site of the model/table "
                                 f"(it has {len(known)} sites, e.g. {next(iter(known), None)!r})")
            top = int(indices.max())
            if top >= known[site]:
                raise ValueError(f"site {site!r}: neuron index {top} is out of range for width {known[site]}")
        return self

    # ------------------------------------------------------------------------------------------ set algebra
    def _derive(self, neurons: Iterable[Neuron], **meta: Any) -> "NeuronSet":
        base = dict(method=self.method, params=self.params, model=self.model, sources=self.sources)
        base.update(meta)
        return NeuronSet(neurons, **base)

    def _combine_meta(self, other: "NeuronSet", op: str) -> dict[str, Any]:
        if not isinstance(other, NeuronSet):
            raise TypeError(f"{op} needs a NeuronSet, got {type(other).__name__}")
        if self.model and other.model and self.model != other.model:
            raise ValueError(f"cannot take the {op} of sets from different models ({self.model!r} vs {other.model!r})")
        sources = {f"left.{k}": v for k, v in self.sources.items()}
        sources.update({f"right.{k}": v for k, v in other.sources.items()})
        params = {
            "left": {"method": self.method, "params": self.params},
            "right": {"method": other.method, "params": other.params},
        }
        return dict(method=op, params=params, model=self.model or other.model, sources=sources)

    def union(self, other: "NeuronSet") -> "NeuronSet":
        """Neurons in either set (by ``(site, index)``); a neuron in both keeps ``self``'s score."""
        meta = self._combine_meta(other, "union")
        extra = [n for n in other if (n.site, n.index) not in self._keys]
        return NeuronSet(list(self._neurons) + extra, **meta)

    def intersection(self, other: "NeuronSet") -> "NeuronSet":
        """Neurons in both sets (by ``(site, index)``), with ``self``'s scores."""
        meta = self._combine_meta(other, "intersection")
        return NeuronSet([n for n in self._neurons if (n.site, n.index) in other], **meta)

    def difference(self, other: "NeuronSet") -> "NeuronSet":
        """Neurons of ``self`` not in ``other`` (by ``(site, index)``), with ``self``'s scores."""
        meta = self._combine_meta(other, "difference")
        return NeuronSet([n for n in self._neurons if (n.site, n.index) not in other], **meta)

    # ------------------------------------------------------------------------------------------------- I/O
    def to_pandas(self):
        """Long DataFrame ``site | layer | kind | index | group | score``, one row per neuron (``culnig_ext.data.frames``)."""
        return neurons_to_pandas(self)

    @classmethod
    def from_pandas(cls, df, **meta: Any) -> "NeuronSet":
        """A set from a DataFrame with ``site``, ``index`` (and ``score``) columns; metadata from ``df.attrs``."""
        return neurons_from_pandas(df, cls, **meta)

    def _repr_html_(self) -> str:
        return neurons_html(self)

    def to_json(self) -> dict[str, Any]:
        """The file's JSON object (see the module docstring)."""
        return {
            "format": FORMAT_VERSION,
            "method": self.method,
            "params": self.params,
            "model": self.model,
            "sources": self.sources,
            "neurons": [{"site": n.site, "index": n.index, "score": n.score} for n in self._neurons],
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Write the set as JSON to ``path`` atomically (temp file + rename). Returns the path."""
        obj = self.to_json()
        neurons = obj.pop("neurons")
        # Header pretty-printed, one neuron per line: readable and diff-able without being huge.
        head = json.dumps(obj, indent=1, allow_nan=False)[:-2]
        body = ",\n".join("  " + json.dumps(n, allow_nan=False) for n in neurons)
        text = f'{head},\n "neurons": [\n{body}\n ]\n}}\n' if neurons else f'{head},\n "neurons": []\n}}\n'
        return atomic_write_text(path, text)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "NeuronSet":
        """Read a set written by ``save``. Errors name the file and the offending field or neuron entry."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"neuron file not found: {path}")
        try:
            obj = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None
        except UnicodeDecodeError:
            raise ValueError(describe_utf8_error(path)) from None
        return cls.from_json(obj, where=str(path))

    @classmethod
    def from_json(cls, obj: Any, *, where: str = "<json>") -> "NeuronSet":
        """Build from the JSON object of the file format; ``where`` names the source in errors."""
        if not isinstance(obj, dict):
            raise ValueError(f"{where}: expected a JSON object at the top level, got {type(obj).__name__}")
        missing = [k for k in _TOP_KEYS if k not in obj]
        if missing:
            raise ValueError(f"{where}: missing field(s) {missing}")
        unknown = [k for k in obj if k not in _TOP_KEYS]
        if unknown:
            raise ValueError(f"{where}: unknown field(s) {unknown}; expected {list(_TOP_KEYS)}")
        if obj["format"] != FORMAT_VERSION:
            raise ValueError(f"{where}: field 'format' is {obj['format']!r}, expected {FORMAT_VERSION!r}")
        method, params, model, sources = _check_meta(obj["method"], obj["params"], obj["model"], obj["sources"], where)
        entries = obj["neurons"]
        if not isinstance(entries, list):
            raise ValueError(f"{where}: field 'neurons' must be a list, got {type(entries).__name__}")
        neurons: list[Neuron] = []
        seen: dict[tuple[str, int], int] = {}
        for i, entry in enumerate(entries):
            at = f"{where}: neurons[{i}]"
            if not isinstance(entry, dict):
                raise ValueError(f"{at}: expected an object, got {entry!r}")
            missing = [k for k in _NEURON_KEYS if k not in entry]
            unknown = [k for k in entry if k not in _NEURON_KEYS]
            if missing or unknown:
                raise ValueError(f"{at}: keys must be {list(_NEURON_KEYS)} (missing {missing}, unknown {unknown})")
            if not isinstance(entry["site"], str):
                raise ValueError(f"{at}: field 'site' must be a string, got {entry['site']!r}")
            neuron = _check_neuron(Neuron(entry["site"], entry["index"], entry["score"]), at)
            key = (neuron.site, neuron.index)
            if key in seen:
                raise ValueError(f"{at}: duplicate neuron ({key[0]!r}, {key[1]}), first at neurons[{seen[key]}]")
            seen[key] = i
            neurons.append(neuron)
        return cls(neurons, method=method, params=params, model=model, sources=sources)


__all__ = ["FORMAT_VERSION", "Neuron", "NeuronSet", "site_key", "site_widths", "MLP", "ATTN"]
