"""ScoreTable: the scorer's output — per site, per group, the sum over items of ``P(y|x) * max_t a*dP/da``.

A table holds sums, not means, so tables scored on disjoint items add up exactly (``ScoreTable.merge``): that is
the basis of sharding over GPUs and of resuming an interrupted run. It is saved as one safetensors file (one tensor
per site plus counts and probability sums; metadata as strings), written atomically.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .atomic import atomic_write
from .sites import ATTN, MLP, parse_site_name

FORMAT_VERSION = "culnig-scores/1"
_COUNTS = "__counts__"
_PROB_SUMS = "__prob_sums__"
_META_KEYS = ("model", "revision", "dataset_fingerprint", "package_version", "clamp_min", "format")


class ScoreTable:
    """Summed attribution scores, ``table[site] -> Tensor[G, N] float64`` (G groups, N neurons of the site).

    Attributes:
        groups: group names, in row order.
        counts: ``Tensor[G] int64``, items scored per group.
        prob_sums: ``Tensor[G] float64``, the sum of ``P(y|x)`` over each group's items (the total weight).
        table: ``{site name: Tensor[G, N] float64}`` in model order.
        metadata: strings: model, revision, dataset_fingerprint, package_version, clamp_min.
    """

    def __init__(
        self,
        groups: Sequence[str],
        counts: Sequence[int] | torch.Tensor,
        sums: Mapping[str, torch.Tensor],
        prob_sums: Sequence[float] | torch.Tensor | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        self.groups = [str(g) for g in groups]
        if len(set(self.groups)) != len(self.groups):
            raise ValueError(f"duplicate group names in {self.groups}")
        g = len(self.groups)
        self.counts = torch.as_tensor(counts, dtype=torch.int64).cpu().clone()
        if self.counts.shape != (g,):
            raise ValueError(f"counts has shape {tuple(self.counts.shape)}, expected ({g},) for groups {self.groups}")
        if prob_sums is None:
            prob_sums = torch.zeros(g, dtype=torch.float64)
        self.prob_sums = torch.as_tensor(prob_sums, dtype=torch.float64).cpu().clone()
        if self.prob_sums.shape != (g,):
            raise ValueError(f"prob_sums has shape {tuple(self.prob_sums.shape)}, expected ({g},)")
        self.table: dict[str, torch.Tensor] = {}
        for site, tensor in sums.items():
            parse_site_name(site)
            tensor = torch.as_tensor(tensor)
            if tensor.dim() != 2 or tensor.shape[0] != g:
                raise ValueError(f"site {site!r}: sums must be [G={g}, N], got {tuple(tensor.shape)}")
            self.table[site] = tensor.detach().to(device="cpu", dtype=torch.float64)
        self.metadata: dict[str, str] = {k: str(v) for k, v in (metadata or {}).items()}

    # ----------------------------------------------------------------------------------------------- views
    @property
    def sites(self) -> list[str]:
        """Site names in model order."""
        return list(self.table)

    def __getitem__(self, site: str) -> torch.Tensor:
        return self.table[site]

    def __repr__(self) -> str:
        n = sum(t.shape[1] for t in self.table.values())
        return (
            f"ScoreTable({len(self.groups)} groups, {int(self.counts.sum())} items, {len(self.table)} sites, "
            f"{n} neurons, model={self.metadata.get('model', '?')!r})"
        )

    @property
    def num_items(self) -> int:
        return int(self.counts.sum())

    def sites_of_kind(self, kind: str) -> list[str]:
        """Site names of one kind (``"mlp"`` or ``"attn"``)."""
        if kind not in (MLP, ATTN):
            raise ValueError(f"unknown kind {kind!r}; expected 'mlp' or 'attn'")
        return [s for s in self.table if parse_site_name(s)[1] == kind]

    def group_index(self, group: str) -> int:
        try:
            return self.groups.index(group)
        except ValueError:
            raise KeyError(f"unknown group {group!r}; this table has {self.groups}") from None

    def normalizer(self, by: str = "count") -> torch.Tensor:
        """Per-group divisor ``Tensor[G] float64``: item counts (``"count"``, the paper's), summed probabilities
        (``"prob"``: makes sets answered with very different confidence comparable) or ones (``"none"``)."""
        if by == "count":
            return self.counts.to(torch.float64)
        if by == "prob":
            return self.prob_sums.clone()
        if by == "none":
            return torch.ones(len(self.groups), dtype=torch.float64)
        raise ValueError(f"unknown normalisation {by!r}; expected 'count', 'prob' or 'none'")

    # ------------------------------------------------------------------------------------------ as data
    def to_pandas(self, normalize: str | None = None):
        """Long DataFrame ``site | layer | kind | index | group | score`` (see ``culnig_ext.frames``)."""
        from .frames import table_to_pandas

        return table_to_pandas(self, normalize)

    @classmethod
    def from_pandas(cls, df) -> "ScoreTable":
        """The table ``to_pandas()`` (sums) was made from."""
        from .frames import table_from_pandas

        return table_from_pandas(df)

    def to_xarray(self, normalize: str | None = None):
        """``xarray.Dataset``, one variable per site over ``(group, <site>/index)`` (needs xarray)."""
        from .frames import table_to_xarray

        return table_to_xarray(self, normalize)

    def _repr_html_(self) -> str:
        from .frames import table_html

        return table_html(self)

    # ------------------------------------------------------------------------------------------- combining
    @staticmethod
    def merge(tables: Iterable["ScoreTable"]) -> "ScoreTable":
        """Add tables scored on disjoint items of the same model (shards, resumed runs).

        Groups are united in order of first appearance; every table must hold the same sites with the same widths.
        """
        tables = list(tables)
        if not tables:
            raise ValueError("merge needs at least one table")
        first = tables[0]
        for i, t in enumerate(tables[1:], start=1):
            if t.sites != first.sites or any(t[s].shape[1] != first[s].shape[1] for s in first.sites):
                raise ValueError(f"table {i} has different sites or widths than table 0; cannot merge")
            for key in ("model", "clamp_min"):
                if t.metadata.get(key) != first.metadata.get(key):
                    raise ValueError(
                        f"table {i} has {key}={t.metadata.get(key)!r}, table 0 has {first.metadata.get(key)!r}"
                    )
        seen: dict[str, int] = {}
        for i, t in enumerate(tables):  # the same items twice would be counted twice
            fp = t.metadata.get("dataset_fingerprint", "")
            if fp and fp in seen:
                raise ValueError(f"tables {seen[fp]} and {i} were scored on the same items (dataset_fingerprint "
                                 f"{fp}); merge adds tables of disjoint items only")
            seen.setdefault(fp, i)
        groups = list(dict.fromkeys(g for t in tables for g in t.groups))
        rows = {g: i for i, g in enumerate(groups)}
        counts = torch.zeros(len(groups), dtype=torch.int64)
        prob_sums = torch.zeros(len(groups), dtype=torch.float64)
        sums = {s: torch.zeros(len(groups), first[s].shape[1], dtype=torch.float64) for s in first.sites}
        for t in tables:
            index = torch.tensor([rows[g] for g in t.groups], dtype=torch.int64)
            counts.index_add_(0, index, t.counts)
            prob_sums.index_add_(0, index, t.prob_sums)
            for s in sums:
                sums[s].index_add_(0, index, t[s])
        metadata = dict(first.metadata)
        fingerprints = sorted(t.metadata.get("dataset_fingerprint", "") for t in tables)
        metadata["dataset_fingerprint"] = hashlib.sha256("+".join(fingerprints).encode()).hexdigest()[:16]
        return ScoreTable(groups, counts, sums, prob_sums, metadata)

    # ------------------------------------------------------------------------------------------------- I/O
    def save(self, path: str | os.PathLike) -> Path:
        """Write the table to one safetensors file, atomically (temp file in the same folder + rename)."""
        path = Path(path)
        tensors = {site: t.contiguous() for site, t in self.table.items()}
        tensors[_COUNTS] = self.counts.contiguous()
        tensors[_PROB_SUMS] = self.prob_sums.contiguous()
        metadata = dict(self.metadata)
        metadata.update(
            format=FORMAT_VERSION,
            groups=json.dumps(self.groups),
            sites=json.dumps(self.sites),
        )
        from . import __version__

        metadata.setdefault("package_version", __version__)
        atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "ScoreTable":
        """Read a table written by ``save``; a file of another kind is refused with its name in the error."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"score file not found: {path}")
        try:
            tensors = load_file(str(path))
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as handle:
                metadata = dict(handle.metadata() or {})
        except (SafetensorError, OSError, ValueError) as exc:
            raise ValueError(f"{path}: not a readable safetensors score file ({exc})") from exc
        if metadata.get("format") != FORMAT_VERSION:
            raise ValueError(f"{path}: format {metadata.get('format')!r} is not {FORMAT_VERSION!r}")
        groups = json.loads(metadata.pop("groups"))
        sites = json.loads(metadata.pop("sites"))
        missing = [s for s in sites + [_COUNTS, _PROB_SUMS] if s not in tensors]
        if missing:
            raise ValueError(f"{path}: missing tensors {missing[:5]}")
        sums = {s: tensors[s] for s in sites}
        return cls(groups, tensors[_COUNTS], sums, tensors[_PROB_SUMS], metadata)

    def fingerprint(self) -> str:
        """A short content hash of the table (sums, counts, groups, metadata): names the source of a neuron set."""
        h = hashlib.sha256()
        # "format" is stamped by save(): leaving it out gives a table the same fingerprint before and after a
        # save/load round trip.
        meta = sorted((k, v) for k, v in self.metadata.items() if k != "format")
        h.update(json.dumps([self.groups, self.sites, meta]).encode())
        h.update(self.counts.numpy().tobytes())
        h.update(self.prob_sums.numpy().tobytes())
        for t in self.table.values():
            h.update(t.numpy().tobytes())
        return h.hexdigest()[:16]
