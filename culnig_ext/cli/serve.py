"""``culnig serve``: serve a run folder's report.html on 127.0.0.1 (stdlib http.server) until Ctrl-C."""
from __future__ import annotations

import argparse

NAME = "serve"


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(NAME, help="serve a run folder's report.html on 127.0.0.1 until Ctrl-C")
    p.add_argument("run_dir", help="a run folder holding report.html")
    p.add_argument("--port", type=int, default=8000, help="port on 127.0.0.1 (default 8000; 0: any free port)")
    return p


def run(args) -> str:
    from culnig_ext.reporting.serving import serve
    from culnig_ext.studies.option_checks import non_negative_int

    non_negative_int("--port", args.port)
    serve(args.run_dir, args.port, ready=lambda url: print(f"serving {url} (Ctrl-C stops)", flush=True))
    return "stopped"
