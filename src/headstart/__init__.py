"""headstart: transfer learning from pretrained backbones, with a content-addressed feature store.

The public API is small; heavy dependencies import lazily inside the functions that need them.
Metrics live in :mod:`headstart.evaluate` (``from headstart.evaluate import evaluate``): a
top-level ``evaluate`` function would be shadowed by that subpackage once it is imported. The
top-level entry points therefore have names that no subpackage has: ``rank_backbones``
(:func:`headstart.workflows.rank.rank_backbones`).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

_LAZY = {
    "load_backbone": "headstart.backbones",
    "list_backbones": "headstart.backbones",
    "BackboneSpec": "headstart.backbones",
    "load_data": "headstart.data",
    "extract": "headstart.features",
    "FeatureStore": "headstart.features",
    "LinearProbe": "headstart.heads",
    "KNNProbe": "headstart.heads",
    "MLPHead": "headstart.heads",
    "Bundle": "headstart.bundles",
    "load_bundle": "headstart.bundles",
    "HeadstartError": "headstart.errors",
    "rank_backbones": "headstart.workflows.rank",
}

__all__ = [
    "BackboneSpec",
    "Bundle",
    "FeatureStore",
    "HeadstartError",
    "KNNProbe",
    "LinearProbe",
    "MLPHead",
    "__version__",
    "extract",
    "list_backbones",
    "load_backbone",
    "load_bundle",
    "load_data",
    "rank_backbones",
]

if TYPE_CHECKING:  # pragma: no cover
    from headstart.backbones import BackboneSpec, list_backbones, load_backbone
    from headstart.bundles import Bundle, load_bundle
    from headstart.data import load_data
    from headstart.errors import HeadstartError
    from headstart.features import FeatureStore, extract
    from headstart.heads import KNNProbe, LinearProbe, MLPHead
    from headstart.workflows.rank import rank_backbones


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'headstart' has no attribute {name!r}")
