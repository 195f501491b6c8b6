"""The one exception type users see, and the warning category of the estimators.

Everything a user can fix (a bad file, a bad option, a malformed feature set) raises
:class:`UserError` (or a subclass) with a message that names the thing, the value and the fix.
The command line prints these as one message without a traceback; any other exception is a bug
and keeps its traceback.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO


class UserError(ValueError):
    """An error the user can fix; its message says what, where and how."""


class FeatureSetError(UserError):
    """A feature set handed to an estimator is malformed."""


class CCFVWarning(UserWarning):
    """Something in the data made an estimator skip or adjust part of its computation."""


@contextmanager
def collect_ccfv_warnings(*, everything: bool = False) -> Iterator[list[str]]:
    """The one place where the estimators' :class:`CCFVWarning` s are taken out of the output.

    Inside the block every CCFVWarning is collected, not shown: the list this yields gets
    each one's message, in order. Ranking, the bootstrap and ``ccfv evaluate`` score many
    models and subsets whose adjustments (a class left out of a case, a near-singular
    covariance) would otherwise repeat on every one; their callers log what they collected
    (at DEBUG level: ``logging.getLogger("ccfv").setLevel("DEBUG")`` shows it). Other
    warnings are shown as usual, unless ``everything`` (a probe on made-up data, whose
    warnings say nothing about the user's data): then they are dropped as well.
    """
    collected: list[str] = []
    with warnings.catch_warnings():
        if everything:
            warnings.simplefilter("ignore")
        shown = warnings.showwarning

        def show(
            message: Warning | str,
            category: type[Warning],
            filename: str,
            lineno: int,
            file: TextIO | None = None,
            line: str | None = None,
        ) -> None:
            if issubclass(category, CCFVWarning):
                collected.append(str(message))
            else:
                shown(message, category, filename, lineno, file, line)

        warnings.showwarning = show
        warnings.simplefilter("always", CCFVWarning)
        yield collected


def first_line(error: BaseException, *, printable: bool = False) -> str:
    """The first non-empty line of an exception's message (its type's name when empty).

    With ``printable=True`` terminal colour codes and other control characters are removed first
    (for text written into a YAML file).
    """
    text = printable_text(str(error)) if printable else str(error)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def printable_text(text: str) -> str:
    """``text`` without terminal colour codes and other control characters (YAML-safe)."""
    text = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", text)
    return "".join(c for c in text if c.isprintable() or c == "\n")
