"""Former home of ``ccfv bank init`` and ``ccfv bank check``, kept as an import path.

``bank init`` is :mod:`ccfv.bank.init`, ``bank check`` is :mod:`ccfv.bank.check`; the names
below are theirs, re-exported so that ``from ccfv.bank.scan import ...`` keeps working.
"""

from ccfv.bank.check import (
    CheckRow,
    check_bank,
    check_entries,
    format_check_table,
    preprocessing_summary,
)
from ccfv.bank.init import Candidate, Skipped, scan_folders, write_bank

__all__ = [
    "Candidate",
    "CheckRow",
    "Skipped",
    "check_bank",
    "check_entries",
    "format_check_table",
    "preprocessing_summary",
    "scan_folders",
    "write_bank",
]
