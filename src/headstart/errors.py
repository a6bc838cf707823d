"""Errors raised by headstart.

Every error a user can cause is a :class:`HeadstartError`. Its message says what went wrong, where,
what was expected, what came, and how to fix it. The CLI prints the message on one line and exits
with code 2, never with a traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

from sklearn.exceptions import NotFittedError as _SklearnNotFittedError


class HeadstartError(Exception):
    """Base class for errors caused by user input or the environment."""

    exit_code = 2


class UnknownBackboneError(HeadstartError, ValueError):
    """A backbone name does not resolve to any known model."""


class WeightsUnavailableError(HeadstartError):
    """Pretrained weights are neither cached, packaged, nor downloadable."""


class WeightsMismatchError(HeadstartError):
    """A weight file's sha256 differs from the recorded one."""


class LayerError(HeadstartError, ValueError):
    """A layer name is not one of the backbone's layers."""


class OptionError(HeadstartError, ValueError):
    """An argument or option has a value outside what it accepts."""


class DataError(HeadstartError, ValueError):
    """A data source is missing, empty or malformed."""


class CacheError(HeadstartError):
    """The feature store cannot be read or written."""


class MissingDependencyError(HeadstartError, ImportError):
    """An optional dependency is not installed."""


class NotFittedError(HeadstartError, _SklearnNotFittedError):
    """An estimator or bundle was used before it was fitted."""


def did_you_mean(name: str, choices: Iterable[str], n: int = 3) -> str:
    """Return a ' Did you mean: a, b?' suffix listing close matches, or an empty string."""
    matches = difflib.get_close_matches(name, list(choices), n=n, cutoff=0.5)
    if not matches:
        return ""
    return " Did you mean: " + ", ".join(matches) + "?"


def require(module: str, extra: str):
    """Import an optional dependency, or raise an error that names the install command.

    Args:
        module: The module to import, for example ``"transformers"``.
        extra: The headstart extra that provides it, for example ``"text"``.

    Returns:
        The imported module.
    """
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(
            f"{module} is not installed, and this feature needs it. "
            f"Install it with: pip install 'headstart[{extra}]' (or pip install {module})."
        ) from exc
