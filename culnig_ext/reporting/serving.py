"""``culnig serve``: a run folder over the standard library's ``http.server``, bound to 127.0.0.1 only.

``report.html`` needs no server (it opens from ``file://``); this is for browsers or remote shells (ssh port
forwarding) where a local URL is handier.
"""
from __future__ import annotations

import functools
import http.server
import os
from pathlib import Path
from typing import Callable

HOST = "127.0.0.1"


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    """Serves the folder; requests are not echoed to stderr."""

    def log_message(self, format, *args):  # noqa: A002 (the base class's name)
        pass


def make_server(run_dir: str | os.PathLike, port: int = 8000) -> http.server.ThreadingHTTPServer:
    """A server for ``run_dir`` on ``127.0.0.1:port`` (0: a free port); refuses a folder without report.html."""
    run_dir = Path(run_dir)
    if not (run_dir / "report.html").is_file():
        raise FileNotFoundError(f"{run_dir / 'report.html'}: not found; write it with 'culnig report {run_dir} --html'")
    handler = functools.partial(_QuietHandler, directory=str(run_dir))
    return http.server.ThreadingHTTPServer((HOST, port), handler)


def serve(run_dir: str | os.PathLike, port: int = 8000, ready: Callable[[str], None] = print) -> None:
    """Serve ``run_dir`` until interrupted; ``ready`` gets the page's URL once the socket listens."""
    with make_server(run_dir, port) as server:
        ready(f"http://{HOST}:{server.server_address[1]}/report.html")
        server.serve_forever()
