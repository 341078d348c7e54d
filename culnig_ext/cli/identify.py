"""``culnig identify general|specific``: culture-general or culture-specific neurons from score tables."""
from __future__ import annotations

import argparse
from pathlib import Path

NAME = "identify"


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(NAME, help="select culture-general or culture-specific neurons from score tables")
    kind = p.add_subparsers(dest="which", metavar="general|specific")
    for name in ("general", "specific"):
        q = kind.add_parser(name, help=f"culture-{name} neurons")
        _add_tables(q)
        (_add_general if name == "general" else _add_specific)(q)
    return p


def _add_tables(q: argparse.ArgumentParser) -> None:
    q.add_argument("--neur", required=True, help="score table of the cultural items")
    q.add_argument("--ctrl", help="score table of the control items (subtracted)")
    q.add_argument("--crc", help="score table of CountryRC items (its top neurons are removed)")
    q.add_argument("--normalize", default=None, choices=["count", "prob", "none", "total"],
                   help="divide scores by item counts (paper), summed P ('prob'), or nothing")
    q.add_argument("--out", required=True, help="output NeuronSet JSON (or folder with --all-groups)")


def _add_general(q: argparse.ArgumentParser) -> None:
    q.add_argument("--contrast", help="an extra score table subtracted like ctrl (general-ability set)")
    q.add_argument("--t-mlp", type=float, default=0.01, help="top fraction of MLP gate neurons (0.01)")
    q.add_argument("--t-attn", type=float, default=0.002, help="top fraction of q/k/v neurons (0.002)")
    q.add_argument("--r-mlp", type=float, default=0.01, help="CountryRC removal fraction, MLP (0.01)")
    q.add_argument("--r-attn", type=float, default=0.01, help="CountryRC removal fraction, q/k/v (0.01)")


def _add_specific(q: argparse.ArgumentParser) -> None:
    q.add_argument("--group", help="target group (country); or --all-groups")
    q.add_argument("--all-groups", action="store_true", help="one file per group into the --out folder")
    q.add_argument("--t", type=float, default=0.003, help="top fraction of all neurons (0.003)")
    q.add_argument("--r", type=float, default=0.01, help="CountryRC removal fraction (0.01)")
    q.add_argument("--z-min", type=float, default=0.5, help="minimum z-score across groups (0.5)")


def run(args) -> str:
    from culnig_ext.studies.option_checks import identify_options

    identify_options(args)  # before torch is imported
    from culnig_ext._utils.names import slug
    from culnig_ext.selection import culnig as select
    from culnig_ext.studies.preflight import check_identify

    tables = check_identify(args)
    neur, ctrl, crc = tables.neur, tables.ctrl, tables.crc
    if args.which == "general":
        ns = select.general(neur, ctrl, crc, args.t_mlp, args.t_attn, args.r_mlp, args.r_attn,
                            normalize=args.normalize or "count", contrast=tables.contrast)
        ns.save(args.out)
        return f"wrote {args.out}: {len(ns)} culture-general neurons {ns.counts_by_kind()}"
    groups = neur.groups if args.all_groups else [args.group]
    written = []
    for group in groups:
        ns = select.specific(neur, ctrl, crc, group, args.t, args.r, args.z_min, normalize=args.normalize or "total")
        path = Path(args.out) / f"{slug(group)}.json" if args.all_groups else Path(args.out)
        ns.save(path)
        written.append(f"{group}: {len(ns)}")
    return f"wrote {args.out}: culture-specific neurons " + ", ".join(written)
