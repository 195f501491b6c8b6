"""Every transferability estimator under the name used by the API, the CLI and the CSV columns.

An estimator is a function ``(features, **options) -> float`` on a feature set
(``{layer: [(X, y) per case]}``), larger = more transferable. Adding one is one file in this
package and one line here.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from ccfv.errors import UserError
from ccfv.estimators.ccfv import ccfv_score

ESTIMATORS: dict[str, Callable[..., float]] = {
    "ccfv": partial(ccfv_score, variant="paper"),
    "ccfv-official": partial(ccfv_score, variant="official"),
}


def get_estimator(name: str) -> Callable[..., float]:
    """The estimator registered as ``name``; a clear error lists the known names."""
    try:
        return ESTIMATORS[name]
    except KeyError:
        raise UserError(f"unknown method {name!r}: known methods are "
                        f"{', '.join(sorted(ESTIMATORS))}") from None
