"""Bundles: trained models saved as plain folders (``bundle.json`` + safetensors), one API for every kind.

:func:`load_bundle` reads ``bundle.json`` and returns the class its ``kind`` names:

* ``classification``: :class:`Bundle` (backbone reference + fitted head, or a fine-tuned backbone);
* ``detection`` and ``segmentation``: :class:`TaskBundle` (the whole trained network).

Both predict with ``predict_batch(inputs, top_k)``, one :class:`Prediction` or
:class:`TaskPrediction` per input. Bundles written before ``kind`` existed load too. A run's
``--out`` folder loads its ``bundle/`` (:func:`locate_bundle`).
"""

from headstart.bundles.base import BUNDLE_FORMAT, KINDS, bundle_kind, load_bundle, locate_bundle, read_document
from headstart.bundles.classifier import Bundle, Prediction
from headstart.bundles.task import TaskBundle, TaskPrediction
from headstart.bundles.tfidf import TfidfBundle  # noqa: F401 - registers the "tfidf" kind (sk:tfidf bundles)

__all__ = ["BUNDLE_FORMAT", "KINDS", "Bundle", "Prediction", "TaskBundle", "TaskPrediction", "bundle_kind", "load_bundle", "locate_bundle", "read_document"]
