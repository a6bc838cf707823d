"""Evaluation: metrics of predicted probabilities, labelled by split."""

from __future__ import annotations

from headstart.evaluate.metrics import EvalResult, evaluate, expected_calibration_error

__all__ = ["EvalResult", "evaluate", "expected_calibration_error"]
