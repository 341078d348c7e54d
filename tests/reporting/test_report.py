"""write_report: table cells equal the numbers given, valid PNGs, regeneration from results.json."""
from __future__ import annotations

import json
import statistics
import struct
import zlib

import pytest

from culnig_ext.reporting.analysis import kinship
from culnig_ext.intervention.evaluate import EvalResult, ItemRecord
from culnig_ext.reporting.report import ReportResults, write_report, write_report_from_dir
from culnig_ext.stats.rows import AccuracyRow, accuracy_row

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _results() -> dict:
    return {
        "title": "CULNIG run: tiny",
        "model": "tiny-llama",
        "neuron_set": "culture-general",
        "n_neurons": 123,
        "alpha": 0.05,
        "rows": [
            {"eval_set": "BLEnD", "cultural": True, "n_items": 400, "original": 0.625, "inhibited": 0.4125,
             "random": [0.61, 0.62, 0.6375], "p_value": 0.0003, "metric": "accuracy"},
            {"eval_set": "CountryRC", "cultural": True, "n_items": 200, "original": 0.9, "inhibited": 0.88,
             "random": [0.895], "p_value": 0.2718, "metric": "accuracy"},
            {"eval_set": "CommonsenseQA", "cultural": False, "n_items": 100, "original": 0.55, "inhibited": 0.54,
             "random": [0.55, 0.53], "p_value": 0.00001, "metric": "accuracy"},
        ],
        "kinship": {"targets": ["JP", "KR"], "groups": ["JP", "KR", "US"],
                    "matrix": [[0.25, 0.05, -0.01], [0.02, 0.125, 0.0]]},
        "layers": {"num_layers": 4, "counts": {"mlp": [5, 0, 7, 1], "attn": [2, 2, 0, 9]}},
        "notes": ["a note"],
        "metadata": {"seed": "0"},
    }


def _table_rows(md: str, header_start: str) -> list[list[str]]:
    lines = md.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip().strip("|").split("|")])
    return rows


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == PNG_MAGIC
    length, kind = struct.unpack(">I4s", data[8:16])
    assert kind == b"IHDR" and length == 13
    crc = struct.unpack(">I", data[29:33])[0]
    assert crc == zlib.crc32(data[12:29])  # the header chunk is intact
    assert data[-8:-4] == b"IEND"
    return struct.unpack(">II", data[16:24])


def test_report_cells_equal_the_numbers_given(tmp_path):
    given = _results()
    path = write_report(tmp_path / "run", given)
    assert path == tmp_path / "run" / "report.md"
    md = path.read_text()
    rows = _table_rows(md, "| Evaluation set")
    assert len(rows) == 3
    for cells, row in zip(rows, given["rows"]):
        name, metric, n, orig, ours, rand, diff, mde, p, p_holm, sig = cells
        assert name == (row["eval_set"] if row["cultural"] else f"{row['eval_set']} (non-cultural)")
        assert metric == "accuracy" and int(n) == row["n_items"]
        assert float(orig) == pytest.approx(100 * row["original"], abs=0.005)
        assert float(ours) == pytest.approx(100 * row["inhibited"], abs=0.005)
        if len(row["random"]) >= 2:
            mean, sd = (float(x) for x in rand.split("±"))
            assert sd == pytest.approx(100 * statistics.stdev(row["random"]), abs=0.005)
        else:
            mean = float(rand)
        assert mean == pytest.approx(100 * statistics.mean(row["random"]), abs=0.005)
        assert float(p) == pytest.approx(row["p_value"], rel=0.01)
        assert float(diff) == pytest.approx(100 * (row["inhibited"] - statistics.mean(row["random"])), abs=0.005)
        assert mde == "–"  # the rows given carry no power figure
    # Holm by hand: sorted p 1e-5, 3e-4, 0.2718 times 3, 2, 1 -> 3e-5, 6e-4, 0.2718 (monotone already)
    assert [float(r[9]) for r in rows] == pytest.approx([6e-4, 0.2718, 3e-5], rel=0.01)
    assert [r[10] for r in rows] == ["yes", "no", "yes"]
    # the exact strings for the first row
    assert rows[0][3:] == ["62.50", "41.25", "62.25 ± 1.39", "-21.00", "–", "0.0003", "0.0006", "yes"]
    assert rows[2][8] == "1.0e-05"

    kin = _table_rows(md, "| Inhibited")
    assert kin == [["JP", "25.00", "5.00", "-1.00"], ["KR", "2.00", "12.50", "0.00"]]
    assert "MLP neurons: 13; attention neurons: 13; 4 layers." in md
    assert "(123 neurons)" in md and "- a note" in md

    for name in ("kinship.png", "layers.png"):
        width, height = _png_size((tmp_path / "run" / name).read_bytes())
        assert width > 100 and height > 100
        assert f"]({name})" in md
    assert json.loads((tmp_path / "run" / "results.json").read_text())["rows"][0]["random"] == [0.61, 0.62, 0.6375]
    assert not [p for p in (tmp_path / "run").iterdir() if p.name.endswith(".tmp")]


def test_regenerate_from_dir(tmp_path):
    run = tmp_path / "run"
    first = write_report(run, _results()).read_text()
    for name in ("report.md", "kinship.png", "layers.png"):
        (run / name).unlink()
    again = write_report_from_dir(run)
    assert again.read_text() == first
    assert (run / "kinship.png").read_bytes()[:8] == PNG_MAGIC


def test_optional_sections_and_dataclass_input(tmp_path):
    res = ReportResults(
        title="t", model="m", neuron_set="random",
        rows=[AccuracyRow("WVB", 71.5, 60.25, [], None, 10, metric="alignment")],
        kinship=kinship({"A": {"A": 0.5, "B": 0.1}}),
    )
    md = write_report(tmp_path, res).read_text()
    rows = _table_rows(md, "| Evaluation set")
    assert rows == [["WVB", "alignment", "10", "71.50", "60.25"] + ["–"] * 6]
    assert "## Layer distribution" not in md and not (tmp_path / "layers.png").exists()
    assert _table_rows(md, "| Inhibited") == [["A", "50.00", "10.00"]]


@pytest.mark.parametrize(
    "patch, match",
    [
        (lambda r: r["rows"][1].update(original=1.5), r"rows\[1\]\.original.*\[0, 1\]"),
        (lambda r: r["rows"][0].pop("p_value"), r"rows\[0\]: missing field 'p_value'"),
        (lambda r: r["rows"][2]["random"].append("x"), r"rows\[2\]\.random\[2\]: expected a number"),
        (lambda r: r["kinship"]["matrix"][1].pop(), r"kinship\.matrix\[1\]: expected 3 values"),
        (lambda r: r["layers"]["counts"]["attn"].pop(), r"layers\.counts\.attn: expected 4 layers"),
        (lambda r: r.pop("model"), r"missing field 'model'"),
    ],
)
def test_bad_results_are_refused_naming_the_field(tmp_path, patch, match):
    given = _results()
    patch(given)
    with pytest.raises(ValueError, match=match):
        write_report(tmp_path, given)
    assert not (tmp_path / "report.md").exists()


def test_bad_results_json_names_the_file(tmp_path):
    (tmp_path / "results.json").write_text('{"title": "x",\n "rows": [}')
    with pytest.raises(ValueError, match=r"results\.json: line 2"):
        write_report_from_dir(tmp_path)


def _eval(correct: list[bool], ids=None) -> EvalResult:
    ids = ids or [f"i{k}" for k in range(len(correct))]
    return EvalResult(
        [ItemRecord(i, "G", 0, 0 if c else 1, c, [0.0, -1.0]) for i, c in zip(ids, correct)], format="letter"
    )


def test_accuracy_row_from_eval_results():
    n = 40
    original = _eval([True] * 30 + [False] * 10)
    inhibited = _eval([True] * 10 + [False] * 30)
    randoms = [_eval([True] * 29 + [False] * 11), _eval([False] + [True] * 30 + [False] * 9)]
    row = accuracy_row("BLEnD", original, inhibited, randoms, n_resamples=2000)
    assert row.n_items == n
    assert row.original == 0.75 and row.inhibited == 0.25
    assert row.random == [29 / 40, 30 / 40]
    assert row.p_value == pytest.approx(1 / 2001)  # far below every random set
    with pytest.raises(ValueError, match="randoms\\[0\\] is not on the same items"):
        accuracy_row("BLEnD", original, inhibited, [_eval([True] * n, ids=[f"x{k}" for k in range(n)])])


def test_accuracy_row_acc_norm_from_cloze_results():
    def cloze(correct, correct_norm):
        return EvalResult(
            [ItemRecord(f"i{k}", "G", 0, 0, c, [0.0, -1.0], pred_norm=0, correct_norm=cn)
             for k, (c, cn) in enumerate(zip(correct, correct_norm))],
            format="cloze",
        )

    original = cloze([True, True, False, False], [True, True, True, False])
    inhibited = cloze([True, False, False, False], [False, False, False, True])
    randoms = [cloze([True] * 4, [True, True, False, False])]
    row = accuracy_row("X", original, inhibited, randoms, metric="acc_norm", n_resamples=500)
    assert (row.original, row.inhibited, row.random, row.metric) == (0.75, 0.25, [0.5], "acc_norm")
    row = accuracy_row("X", original, inhibited, randoms, n_resamples=500)
    assert (row.original, row.inhibited, row.random, row.metric) == (0.5, 0.25, [1.0], "accuracy")
    with pytest.raises(ValueError, match="original has no acc_norm"):
        accuracy_row("X", _eval([True]), _eval([True]), [], metric="acc_norm")


def test_significant_column_reads_the_holm_p_not_the_raw_p(tmp_path):
    # Raw p 0.001, 0.03, 0.04, 0.5 are all but the last < 0.05; Holm by hand (m = 4): sorted p times 4, 3, 2, 1 =
    # 0.004, 0.09, 0.08, 0.5, made monotone -> 0.004, 0.09, 0.09, 0.5: only the first row is significant.
    given = _results()
    del given["kinship"], given["layers"]
    given["rows"] = [
        {"eval_set": name, "cultural": True, "n_items": 100, "original": 0.8, "inhibited": 0.6, "random": [0.75],
         "p_value": p, "metric": "accuracy"}
        for name, p in (("S1", 0.001), ("S2", 0.03), ("S3", 0.04), ("S4", 0.5))
    ]
    md = write_report(tmp_path, given).read_text()
    rows = _table_rows(md, "| Evaluation set")
    assert [r[8] for r in rows] == ["0.0010", "0.0300", "0.0400", "0.5000"]
    assert [r[9] for r in rows] == ["0.0040", "0.0900", "0.0900", "0.5000"]
    assert [r[10] for r in rows] == ["yes", "no", "no", "no"]
