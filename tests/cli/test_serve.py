"""``culnig serve``: the folder over http on 127.0.0.1 only, and its refusals."""
from __future__ import annotations

import threading
import urllib.request

import pytest

from culnig_ext.cli import main as cli
from culnig_ext.reporting.serving import HOST, make_server


def test_serves_the_page_on_localhost(tmp_path):
    (tmp_path / "report.html").write_text("<html>the page</html>", encoding="utf-8")
    server = make_server(tmp_path, port=0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        host, port = server.server_address[:2]
        assert host == HOST == "127.0.0.1"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/report.html", timeout=10) as response:
            assert response.read() == b"<html>the page</html>"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_refuses_a_folder_without_the_page(tmp_path):
    with pytest.raises(FileNotFoundError, match="report.html: not found; write it with 'culnig report"):
        make_server(tmp_path, port=0)


@pytest.mark.parametrize("argv, fragment", [
    (["serve", "{dir}"], "report.html: not found"),
    (["serve", "{dir}", "--port", "-1"], "--port must be a whole number >= 0, got -1"),
])
def test_cli_errors_are_one_line(tmp_path, capsys, argv, fragment):
    status = cli.main([a.format(dir=tmp_path) for a in argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 1 and len(err) == 1 and err[0].startswith("culnig serve: error: ") and fragment in err[0]
