"""Built-in text datasets (VADER sentence-sentiment ground truth); filled in by the text work."""

from __future__ import annotations

BUILTINS: tuple[str, ...] = ()


def load(name: str):  # pragma: no cover - no text built-ins yet
    raise KeyError(name)
