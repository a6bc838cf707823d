"""The policy's vocabulary: its error, the strategies, the pattern shortcuts, and name matching.

The rest of :mod:`headstart.engine.policy` imports these; they import nothing of it.
"""

from __future__ import annotations

import difflib
import fnmatch

from headstart.errors import HeadstartError

HEAD_INITS = ("probe", "random", "zeros")
STRATEGIES = ("lp-ft", "linear-then-full", "last-stage", "gradual", "full", "lora")
SHORTCUTS = ("*", "all", "backbone", "head", "last-stage", "last-n:K")
NON_STAGE_GROUPS = ("stem", "neck", "head")


class PolicyError(HeadstartError, ValueError):
    """A fine-tuning policy is invalid, or does not fit the model."""


def did_you_mean(name: str, choices) -> str:
    """`` Did you mean X?`` for the closest of ``choices``, or an empty string."""
    close = difflib.get_close_matches(name, list(choices), n=1)
    return f" Did you mean {close[0]}?" if close else ""


def matches(name: str, pattern: str) -> bool:
    """Whether a parameter name, or one of its module prefixes, matches an fnmatch pattern."""
    if fnmatch.fnmatchcase(name, pattern):
        return True
    parts = name.split(".")
    return any(fnmatch.fnmatchcase(".".join(parts[:i]), pattern) for i in range(1, len(parts)))
