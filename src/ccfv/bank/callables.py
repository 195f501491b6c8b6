"""Importing the class or function a bank entry names (``pkg.module.Name``, ``pkg.module:name``)."""

from __future__ import annotations

import difflib
import importlib
from typing import Any

from ccfv.errors import UserError

__all__ = ["resolve_callable"]


def resolve_callable(reference: str, *, entry: str = "?", what: str = "network") -> Any:
    """Import ``pkg.module.Name`` or ``pkg.module:name`` and return the object.

    A bare name (no dot) is looked up in ``monai.networks.nets``.

    Raises
    ------
    UserError
        The module cannot be imported or has no such attribute (close names are suggested).
    """
    if ":" in reference:
        module_name, attr = reference.split(":", 1)
    elif "." in reference:
        module_name, attr = reference.rsplit(".", 1)
    else:
        module_name, attr = "monai.networks.nets", reference
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UserError(
            f"model '{entry}': cannot import module '{module_name}' of {what} '{reference}' "
            f"({exc}); check the spelling and that the package is installed / on PYTHONPATH"
        ) from None
    try:
        return getattr(module, attr)
    except AttributeError:
        close = difflib.get_close_matches(attr, [n for n in dir(module) if not n.startswith("_")])
        hint = f"; did you mean {', '.join(module_name + '.' + c for c in close)}?" if close else ""
        raise UserError(
            f"model '{entry}': module '{module_name}' has no '{attr}' ({what} '{reference}'){hint}"
        ) from None
