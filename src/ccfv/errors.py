"""The one exception type users see, and the warning category of the estimators.

Everything a user can fix (a bad file, a bad option, a malformed feature set) raises
:class:`UserError` (or a subclass) with a message that names the thing, the value and the fix.
The command line prints these as one message without a traceback; any other exception is a bug
and keeps its traceback.
"""

from __future__ import annotations

import re


class UserError(ValueError):
    """An error the user can fix; its message says what, where and how."""


class FeatureSetError(UserError):
    """A feature set handed to an estimator is malformed."""


class CCFVWarning(UserWarning):
    """Something in the data made an estimator skip or adjust part of its computation."""


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
