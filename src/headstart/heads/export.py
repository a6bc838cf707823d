"""The fitted heads as torch modules, for exporting a whole model (ONNX, torch.export) in one graph.

:func:`head_module` turns a fitted :class:`~headstart.heads.LinearProbe`, :class:`~headstart.heads.MLPHead`
or :class:`~headstart.heads.KNNProbe` into a ``torch.nn.Module`` that maps float features ``(N, D)``
to the same numbers as the head's ``predict_proba``, computed in float64 as the heads compute them:

* linear and MLP heads give **log-probabilities** (``log_softmax`` of the logits; for a binary linear
  probe ``[log sigmoid(-s), log sigmoid(s)]``), so that a temperature divides exact log-probabilities
  rather than the log of a rounded probability;
* the kNN head gives its distance-weighted **vote shares** (cosine: a matrix product and a top-k).

The module's ``output`` attribute says which (``"log_proba"`` or ``"proba"``). Multi-label heads are
not exported (their ``output`` would be per-label sigmoids, which no bundle calibrates).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from headstart.errors import DataError
from headstart.heads.knn import DISTANCE_EPS, KNNProbe
from headstart.heads.linear import LinearProbe
from headstart.heads.mlp import MLPHead


def _buffer(values: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(np.ascontiguousarray(values, dtype=np.float64))


class LinearScores(nn.Module):
    """A fitted linear probe: standardise, one matrix product, log-softmax (or log-sigmoid for two classes)."""

    output = "log_proba"

    def __init__(self, head: LinearProbe) -> None:
        super().__init__()
        self.register_buffer("mean", _buffer(head.mean_))
        self.register_buffer("scale", _buffer(head.scale_))
        self.register_buffer("weight", _buffer(head.coef_))
        self.register_buffer("bias", _buffer(head.intercept_))
        self.binary = head.coef_.shape[0] == 1

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        logits = ((features.double() - self.mean) / self.scale) @ self.weight.T + self.bias
        if self.binary:
            return torch.cat([nn.functional.logsigmoid(-logits), nn.functional.logsigmoid(logits)], dim=1)
        return torch.log_softmax(logits, dim=1)


class MLPScores(nn.Module):
    """A fitted MLP head: standardise, ReLU hidden layers (no dropout at prediction), log-softmax."""

    output = "log_proba"

    def __init__(self, head: MLPHead) -> None:
        super().__init__()
        self.register_buffer("mean", _buffer(head.mean_))
        self.register_buffer("scale", _buffer(head.scale_))
        self.weights = nn.ParameterList([nn.Parameter(_buffer(w), requires_grad=False) for w in head.weights_])
        self.biases = nn.ParameterList([nn.Parameter(_buffer(b), requires_grad=False) for b in head.biases_])

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        hidden = (features.double() - self.mean) / self.scale
        last = len(self.weights) - 1
        for index, (weight, bias) in enumerate(zip(self.weights, self.biases)):
            hidden = hidden @ weight.T + bias
            if index < last:
                hidden = torch.relu(hidden)
        return torch.log_softmax(hidden, dim=1)


class KNNScores(nn.Module):
    """A fitted kNN head: the distances to every training feature, the k nearest, their weighted votes."""

    output = "proba"

    def __init__(self, head: KNNProbe) -> None:
        super().__init__()
        self.register_buffer("reference", _buffer(head.fit_X_))
        n_classes = len(head.classes_)
        self.register_buffer("votes", _buffer(np.eye(n_classes)[np.asarray(head.fit_y_, dtype=np.int64)]))
        # A buffer, not a Python float: the ONNX exporter turned the literal 1e-9 added to a float64 tensor into 0.
        self.register_buffer("eps", torch.tensor([DISTANCE_EPS], dtype=torch.float64))
        self.k = int(head.n_neighbors_)
        self.cosine = head.metric == "cosine"

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        queries = features.double()
        if self.cosine:
            queries = queries / queries.norm(dim=1, keepdim=True).clamp(min=float(np.finfo(np.float64).tiny))
            distances = (1.0 - queries @ self.reference.T).clamp(min=0.0)
        else:
            squared = (queries * queries).sum(1, keepdim=True) + (self.reference * self.reference).sum(1)[None, :] - 2.0 * queries @ self.reference.T
            distances = torch.sqrt(torch.relu(squared))
        # The k nearest, ties at the k-th distance going to the lowest training index, as KNNProbe settles them.
        kth = torch.topk(distances, self.k, dim=1, largest=False).values[:, -1:]
        n = distances.shape[1]
        columns = torch.arange(n, dtype=distances.dtype, device=distances.device).expand_as(distances)
        key = torch.where(distances < kth, torch.full_like(distances, -1.0), torch.where(distances == kth, columns, torch.full_like(distances, n + 1.0)))
        index = torch.topk(key, self.k, dim=1, largest=False).indices
        nearest = torch.gather(distances, 1, index)
        weights = 1.0 / (nearest + self.eps)
        votes = (weights.unsqueeze(-1) * self.votes[index]).sum(dim=1)
        return votes / votes.sum(dim=1, keepdim=True)


def head_module(head) -> nn.Module:
    """The fitted head as a torch module: float features ``(N, D)`` -> float64 scores ``(N, C)``.

    Raises:
        DataError: The head is multi-label, or not a head this function knows.
    """
    if getattr(head, "multilabel_", False):
        raise DataError("Multi-label heads cannot be exported yet: export a single-label bundle.")
    if isinstance(head, LinearProbe):
        return LinearScores(head).eval()
    if isinstance(head, MLPHead):
        return MLPScores(head).eval()
    if isinstance(head, KNNProbe):
        return KNNScores(head).eval()
    raise DataError(f"A {type(head).__name__} head cannot be exported; linear, MLP and kNN heads can.")


__all__ = ["KNNScores", "LinearScores", "MLPScores", "head_module"]
