"""The one exception type users see, and the warning category of the estimators.

Everything a user can fix (a bad file, a bad option, a malformed feature set) raises
:class:`UserError` (or a subclass) with a message that names the thing, the value and the fix.
The command line prints these as one message without a traceback; any other exception is a bug
and keeps its traceback.
"""

from __future__ import annotations


class UserError(ValueError):
    """An error the user can fix; its message says what, where and how."""


class FeatureSetError(UserError):
    """A feature set handed to an estimator is malformed."""


class CCFVWarning(UserWarning):
    """Something in the data made an estimator skip or adjust part of its computation."""
