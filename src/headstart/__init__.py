"""headstart: transfer learning from pretrained backbones, with a content-addressed feature store.

The public API is small; heavy dependencies import lazily inside the functions that need them.
A top-level function named like a subpackage (``evaluate``, ``finetune``) would be replaced by
that subpackage as soon as it is imported, so the entry points have names that no subpackage has:
``rank_backbones`` (:func:`headstart.workflows.rank.rank_backbones`), ``auto``
(:func:`headstart.workflows.auto.auto`), ``fine_tune``
(:func:`headstart.finetune.finetune`), ``train_detector`` and ``train_segmenter``
(:mod:`headstart.tasks`), ``evaluate_predictions`` (:func:`headstart.evaluate.evaluate`) and
``load_bundle``. ``tests/test_architecture.py`` checks that importing every subpackage leaves them
in place.
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
    "auto": "headstart.workflows.auto",
    "fine_tune": "headstart.finetune:finetune",
    "train_detector": "headstart.tasks",
    "train_segmenter": "headstart.tasks",
    "evaluate_predictions": "headstart.evaluate:evaluate",
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
    "auto",
    "evaluate_predictions",
    "extract",
    "fine_tune",
    "list_backbones",
    "load_backbone",
    "load_bundle",
    "load_data",
    "rank_backbones",
    "train_detector",
    "train_segmenter",
]

if TYPE_CHECKING:  # pragma: no cover
    from headstart.backbones import BackboneSpec, list_backbones, load_backbone
    from headstart.bundles import Bundle, load_bundle
    from headstart.data import load_data
    from headstart.errors import HeadstartError
    from headstart.features import FeatureStore, extract
    from headstart.heads import KNNProbe, LinearProbe, MLPHead
    from headstart.evaluate import evaluate as evaluate_predictions
    from headstart.finetune import finetune as fine_tune
    from headstart.tasks import train_detector, train_segmenter
    from headstart.workflows.rank import rank_backbones


def __getattr__(name: str):
    if name in _LAZY:
        module, _, attribute = _LAZY[name].partition(":")
        return getattr(importlib.import_module(module), attribute or name)
    raise AttributeError(f"module 'headstart' has no attribute {name!r}")
