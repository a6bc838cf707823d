"""Candidates of a ranking: a backbone at a layer and an input size, written ``NAME[#LAYER][@SIZE]``.

``tv:mobilenet_v2.IMAGENET1K_V1``, ``timm:tf_efficientnet_lite0#blocks.4``,
``timm:tf_efficientnet_lite0#blocks.4@112`` or ``tv:mobilenet_v2@random@64`` (``@random`` is part
of the name; a trailing ``@`` and digits is the input size). In Python a candidate can also be a
tuple ``(name, layer)`` or ``(name, layer, size)``, or a :class:`Candidate`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from headstart.errors import HeadstartError, LayerError

__all__ = ["POOLED", "Candidate", "RankError", "expand_candidates", "parse_candidates", "resolve_layer"]


class RankError(HeadstartError, ValueError):
    """A candidate, score or combination given to the ranking is malformed."""


# The layer name of the pooled penultimate features.
POOLED = "pooled"


@dataclass(frozen=True)
class Candidate:
    """A backbone to rank, at a layer and an input size.

    Attributes:
        backbone: A prefixed backbone name, ``@random`` included when wanted.
        layer: A layer from the backbone's ``spec.layers``; None is the pooled penultimate layer.
        image_size: The input side in pixels; None takes the ``image_size`` argument of
            :func:`rank_backbones`, else the backbone's own.
    """

    backbone: str
    layer: str | None = None
    image_size: int | None = None

    @classmethod
    def parse(cls, value: str | tuple | Candidate) -> Candidate:
        """Read ``NAME[#LAYER][@SIZE]``, a ``(name, layer[, size])`` tuple, or a Candidate.

        Raises:
            RankError: If the text or tuple is malformed; the message shows the syntax.
        """
        if isinstance(value, Candidate):
            return value
        if isinstance(value, tuple):
            if not 1 <= len(value) <= 3 or not isinstance(value[0], str):
                raise RankError(
                    f"A candidate tuple must be (name,), (name, layer) or (name, layer, size), but got {value!r}."
                )
            name, layer, size = (*value, None, None)[:3]
            return cls(name.strip(), _layer_or_none(layer), _size_or_none(size, str(value)))
        if not isinstance(value, str):
            raise RankError(f"A candidate must be a string NAME[#LAYER][@SIZE] or a tuple, but got {type(value).__name__}.")
        text = value.strip()
        size = None
        head, at, tail = text.rpartition("@")
        if at and tail.isdigit():
            text, size = head, _size_or_none(tail, value)
        name, _, layer = text.partition("#")
        if not name:
            raise RankError(f"Candidate {value!r} has no backbone name; write NAME[#LAYER][@SIZE], e.g. timm:tf_efficientnet_lite0#blocks.4@112.")
        return cls(name.strip(), _layer_or_none(layer), size)

    def __str__(self) -> str:
        text = self.backbone
        if self.layer is not None:
            text += f"#{self.layer}"
        if self.image_size is not None:
            text += f"@{self.image_size}"
        return text


def _layer_or_none(layer: object) -> str | None:
    if layer is None:
        return None
    text = str(layer).strip()
    return None if text in ("", POOLED) else text


def _size_or_none(size: object, where: str) -> int | None:
    if size is None:
        return None
    try:
        value = int(size)
    except (TypeError, ValueError):
        raise RankError(f"Candidate {where!r}: the input size must be a whole number of pixels, but got {size!r}.") from None
    if value < 8:
        raise RankError(f"Candidate {where!r}: the input size must be at least 8 pixels, but got {value}.")
    return value


def parse_candidates(values: Sequence[str | tuple | Candidate]) -> list[Candidate]:
    """Parse every candidate, dropping exact duplicates (first one kept).

    Raises:
        RankError: If a candidate is malformed, or none is given.
    """
    candidates = list(dict.fromkeys(Candidate.parse(v) for v in values))
    if not candidates:
        raise RankError("Name at least one candidate backbone, e.g. --candidates tv:mobilenet_v2.IMAGENET1K_V1,timm:tf_efficientnet_lite0.")
    return candidates


def resolve_layer(layer: str, layers: Sequence[str]) -> str:
    """A layer name, ``pooled``, or a negative index into ``layers`` (``-1`` is the deepest stage)."""
    if layer.lstrip("-").isdigit() and layer.startswith("-"):
        index = int(layer)
        if -len(layers) <= index:
            return layers[index]
        raise LayerError(f"Layer index {layer} is out of range: the backbone has {len(layers)} layers ({', '.join(layers)}).")
    return layer


def expand_candidates(candidates: list[Candidate], layers: Sequence[str] | None) -> list[Candidate]:
    """Each candidate that names no layer, at each of ``layers`` (duplicates dropped); all of them when ``layers`` is empty."""
    if not layers:
        return candidates
    expanded = []
    for candidate in candidates:
        if candidate.layer is not None:
            expanded.append(candidate)
            continue
        for layer in layers:
            expanded.append(Candidate(candidate.backbone, _layer_or_none(layer), candidate.image_size))
    return list(dict.fromkeys(expanded))
