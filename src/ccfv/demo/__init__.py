"""The offline demo: a small bank of MONAI 3D networks, pre-trained on source tasks made from
the MNI152 template, ranked on a grey/white-matter target made from the same template."""

from __future__ import annotations

from pathlib import Path

import yaml

from ccfv.demo.bank import bank_dict
from ccfv.demo.data import write_task

TARGET = "brain_tissue"


def prepare(work_dir: str | Path) -> tuple[Path, Path]:
    """Write (once) the target dataset and the bank file under ``work_dir``; return both paths."""
    work = Path(work_dir)
    data = write_task(TARGET, work / "data")
    bank = work / "bank.yaml"
    text = yaml.safe_dump(bank_dict(), sort_keys=False)
    if not bank.exists() or bank.read_text() != text:
        bank.write_text(text)
    return bank, data
