"""The class table a ranking used is written to scores.json and report.md."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image
from test_data_fingerprint import small_bank

from ccfv.cli import main


def test_class_table_of_a_mixed_01_0255_folder_reaches_the_report(tmp_path, capsys):
    root = tmp_path / "lesions"
    rng = np.random.default_rng(0)
    for c in range(3):
        mask = np.zeros((24, 20), np.uint8)
        mask[4 + c : 14 + c, 5:15] = 1
        (root / "images").mkdir(parents=True, exist_ok=True)
        (root / "masks").mkdir(exist_ok=True)
        image = np.clip(80 * mask + rng.normal(60, 10, mask.shape), 0, 255).astype(np.uint8)
        Image.fromarray(image).save(root / "images" / f"c{c}.png")
        Image.fromarray(mask * (255 if c == 1 else 1)).save(root / "masks" / f"c{c}.png")
    out = tmp_path / "out"
    code = main(
        [
            "rank",
            "--bank",
            str(small_bank(tmp_path / "bank.yaml")),
            "--data",
            str(root),
            "--bootstrap",
            "0",
            "--cache-dir",
            str(tmp_path / "cache"),
            "--out",
            str(out),
            "--quiet",
        ]
    )
    assert code == 0, capsys.readouterr().err
    details = json.loads((out / "scores.json").read_text())["details"]
    assert details["classes"] == {"0": "background", "1": "class_1"}
    assert details["label_rule"] == (
        "binary picture masks: 0 -> background, 1 and 255 -> class 1 (2 masks 0/1, 1 mask 0/255)"
    )
    report = (out / "report.md").read_text()
    assert "- classes: {0: 'background', 1: 'class_1'}" in report
    assert "- label_rule: binary picture masks: 0 -> background, 1 and 255 -> class 1" in report
