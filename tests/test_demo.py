"""The README's first command: `ccfv demo` ranks the built-in bank offline."""

import csv
import math

from ccfv.cli import main
from ccfv.demo.bank import bank_dict


def test_demo_ranks_every_model(tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(["demo", "--cache-dir", str(tmp_path / "cache"), "--out", str(out), "--quiet"])
    assert rc == 0
    rows = list(csv.DictReader(open(out / "scores.csv")))
    names = {m["name"] for m in bank_dict()["models"]}
    assert {r["model"] for r in rows} == names and len(names) == 7
    for row in rows:
        assert math.isfinite(float(row["ccfv"])) and math.isfinite(float(row["ccfv-official"]))
    # ranked by the first method, best first
    values = [float(r["ccfv"]) for r in rows]
    assert values == sorted(values, reverse=True)
    printed = capsys.readouterr().out
    assert "rank" in printed and rows[0]["model"] in printed
    # warm: the same scores from the cache
    rc = main(["demo", "--cache-dir", str(tmp_path / "cache"), "--out", str(out), "--quiet"])
    assert rc == 0
    assert list(csv.DictReader(open(out / "scores.csv"))) == rows
