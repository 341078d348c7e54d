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

from culnig_ext._utils.atomic import atomic_write
from culnig_ext.models.sites import ATTN, MLP, parse_site_name
from culnig_ext.data.frames import table_from_pandas, table_html, table_to_pandas, table_to_xarray

FORMAT_VERSION = "culnig-scores/1"
_COUNTS = "__counts__"
_PROB_SUMS = "__prob_sums__"
_ITEM_HASHES = "__item_hashes__"
_META_KEYS = ("model", "revision", "dataset_fingerprint", "package_version", "clamp_min", "format")


def _canonical_header(path: Path) -> None:
    """Rewrite a safetensors header with its keys sorted: safetensors writes the metadata in hash-map order, which
    differs between processes, and equal tables must give equal bytes (a resumed run is compared byte for byte).
    Key order changes no offset, and the compact JSON keeps the header's length (padded with spaces as safetensors
    itself pads)."""
    with open(path, "r+b") as f:
        size = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(size))
        text = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
        if len(text) > size:  # never expected: same content, same compact form
            raise ValueError(f"{path}: cannot canonicalise the safetensors header ({len(text)} > {size} bytes)")
        f.seek(8)
        f.write(text + b" " * (size - len(text)))


class ScoreTable:
    """Summed attribution scores, ``table[site] -> Tensor[G, N] float64`` (G groups, N neurons of the site).

    Attributes:
        groups: group names, in row order.
        counts: ``Tensor[G] int64``, items scored per group.
        prob_sums: ``Tensor[G] float64``, the sum of ``P(y|x)`` over each group's items (the total weight).
        table: ``{site name: Tensor[G, N] float64}`` in model order.
        metadata: strings: model, revision, dataset_fingerprint, package_version, clamp_min, and the provenance
            fields of ``culnig_ext.scoring.provenance`` (dtype, attn_implementation, weights_hash, prompt_format, control).
        item_hashes: ``Tensor[I] int64``, sorted 64-bit hashes of the item ids (8 bytes an item), or None when
            unknown: lets ``merge`` refuse tables that share items.
    """

    def __init__(
        self,
        groups: Sequence[str],
        counts: Sequence[int] | torch.Tensor,
        sums: Mapping[str, torch.Tensor],
        prob_sums: Sequence[float] | torch.Tensor | None = None,
        metadata: Mapping[str, str] | None = None,
        item_hashes: torch.Tensor | None = None,
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
        self.item_hashes = None if item_hashes is None else torch.as_tensor(item_hashes, dtype=torch.int64).cpu()

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
        """Long DataFrame ``site | layer | kind | index | group | score`` (see ``culnig_ext.data.frames``)."""
        return table_to_pandas(self, normalize)

    @classmethod
    def from_pandas(cls, df) -> "ScoreTable":
        """The table ``to_pandas()`` (sums) was made from."""
        return table_from_pandas(df, cls)

    def to_xarray(self, normalize: str | None = None):
        """``xarray.Dataset``, one variable per site over ``(group, <site>/index)`` (needs xarray)."""
        return table_to_xarray(self, normalize)

    def _repr_html_(self) -> str:
        return table_html(self)

    # ------------------------------------------------------------------------------------------- combining
    @staticmethod
    def merge(tables: Iterable["ScoreTable"], names: Sequence[str] | None = None) -> "ScoreTable":
        """Add tables scored on disjoint items of the same model (shards, ranks, resumed runs).

        Groups are united in order of first appearance. Refused, naming the table and the field: other sites or
        widths, any differing provenance field (model, revision, weights hash, dtype, attention implementation,
        package version, prompt format, control, clamp), and items shared between tables (from their item-id
        hashes; tables that record none cannot be checked and are refused unless all lack them).

        Args:
            names: how to call the tables in errors (e.g. their files); default ``table 0``, ``table 1`` ...
        """
        from culnig_ext.scoring.provenance import FIELDS, mismatch
        from culnig_ext.data.streaming import combine_fingerprints

        tables = list(tables)
        if not tables:
            raise ValueError("merge needs at least one table")
        names = list(names) if names is not None else [f"table {i}" for i in range(len(tables))]
        first = tables[0]
        for i, t in enumerate(tables[1:], start=1):
            if t.sites != first.sites or any(t[s].shape[1] != first[s].shape[1] for s in first.sites):
                raise ValueError(f"{names[i]} has different sites or widths than {names[0]}; cannot merge")
            diff = mismatch(first.metadata, t.metadata, FIELDS)
            if diff is not None:
                key, want, got = diff
                raise ValueError(f"{names[i]} has {key}={got!r}, {names[0]} has {want!r}; cannot merge")
        with_hashes = [t.item_hashes is not None for t in tables]
        if any(with_hashes) and not all(with_hashes):
            missing = names[with_hashes.index(False)]
            raise ValueError(f"{missing} records no item ids, so overlap with the others cannot be checked")
        hashes = None
        if all(with_hashes):
            for i in range(len(tables)):
                for j in range(i + 1, len(tables)):
                    shared = int(torch.isin(tables[j].item_hashes, tables[i].item_hashes).sum())
                    if shared:
                        raise ValueError(f"{names[i]} and {names[j]} share {shared} item(s); merge only tables "
                                         "scored on disjoint items (e.g. the shards of one data set)")
            hashes = torch.sort(torch.cat([t.item_hashes for t in tables])).values
        else:  # no item ids recorded (older tables): the same items twice still show as equal fingerprints
            seen: dict[str, int] = {}
            for i, t in enumerate(tables):
                fp = t.metadata.get("dataset_fingerprint", "")
                if fp and fp in seen:
                    raise ValueError(f"{names[seen[fp]]} and {names[i]} were scored on the same items "
                                     f"(dataset_fingerprint {fp}); merge adds tables of disjoint items only")
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
        fingerprints = [t.metadata.get("dataset_fingerprint", "") for t in tables]
        if all(fingerprints):
            # additive over disjoint item sets: the merged shards have the unsharded data's fingerprint
            metadata["dataset_fingerprint"] = combine_fingerprints(fingerprints)
        return ScoreTable(groups, counts, sums, prob_sums, metadata, hashes)

    # ------------------------------------------------------------------------------------------------- I/O
    def save(self, path: str | os.PathLike) -> Path:
        """Write the table to one safetensors file, atomically (temp file in the same folder + rename)."""
        path = Path(path)
        tensors = {site: t.contiguous() for site, t in self.table.items()}
        tensors[_COUNTS] = self.counts.contiguous()
        tensors[_PROB_SUMS] = self.prob_sums.contiguous()
        if self.item_hashes is not None:
            tensors[_ITEM_HASHES] = self.item_hashes.contiguous()
        metadata = dict(self.metadata)
        metadata.update(
            format=FORMAT_VERSION,
            groups=json.dumps(self.groups),
            sites=json.dumps(self.sites),
        )
        from culnig_ext._utils.version import __version__

        metadata.setdefault("package_version", __version__)
        def write(tmp: Path) -> None:
            save_file(tensors, str(tmp), metadata=metadata)
            _canonical_header(tmp)

        atomic_write(path, write)
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
        return cls(groups, tensors[_COUNTS], sums, tensors[_PROB_SUMS], metadata, tensors.get(_ITEM_HASHES))

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
