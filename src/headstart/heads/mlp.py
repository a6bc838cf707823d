"""A small MLP head: standardized features, ReLU hidden layers with dropout, AdamW, early stopping.

Training runs in torch (on a GPU when there is one). Early stopping watches the validation loss on a
stratified hold-out split and keeps the weights of the best epoch. All randomness (initialization,
dropout, batch order, the split) comes from ``random_state`` and does not touch torch's global random
state, so that the same seed gives the same head on the CPU. Prediction is a float64 numpy forward
pass over the saved weights, so it needs no torch and gives the same numbers after a save and load.
"""

from __future__ import annotations

import numbers

import numpy as np
from scipy.special import expit, softmax

from headstart.heads._base import (
    HeadBase,
    check_fraction,
    resolve_device,
    seed_from,
    standardize_params,
    stratified_split,
)


class MLPHead(HeadBase):
    """Multi-layer perceptron on features, trained with AdamW and early stopping.

    Single-label targets use a softmax output and cross-entropy; multi-label targets (a 2-D 0/1
    indicator ``y``) use one sigmoid per label and binary cross-entropy.

    Args:
        hidden: The width of each hidden layer; ``()`` gives a linear model.
        dropout: The dropout probability after each hidden layer.
        lr: The AdamW learning rate.
        weight_decay: The AdamW weight decay.
        max_epochs: The most passes over the training data.
        batch_size: Examples per optimization step.
        val_fraction: The share of the data held out (stratified by class) for early stopping;
            0 trains for ``max_epochs`` on all the data.
        patience: Stop after this many epochs without a lower validation loss.
        device: ``"auto"`` (a GPU when torch sees one, else the CPU), ``"cpu"`` or ``"cuda"``.
        random_state: Seed for the split, the initialization, dropout and the batch order.

    Attributes:
        classes_: The class labels (``arange(n_labels)`` for multi-label targets).
        multilabel_: Whether the head was fitted on multi-label targets.
        n_features_in_: The number of features seen in ``fit``.
        mean_: Per-feature mean used to standardize the features.
        scale_: Per-feature standard deviation used to standardize the features (1 where it is 0).
        weights_: The weight matrix of each layer, shape ``(n_out, n_in)``.
        biases_: The bias vector of each layer.
        n_epochs_: The number of epochs run.
        best_epoch_: The epoch (counted from 1) whose weights were kept.
        loss_curve_: The mean training loss of each epoch.
        val_loss_curve_: The validation loss after each epoch; empty without a validation split.
    """

    _state_arrays = ("mean_", "scale_", "weights_", "biases_")
    _state_meta = ("n_epochs_", "best_epoch_", "loss_curve_", "val_loss_curve_")

    def __init__(
        self,
        hidden: tuple[int, ...] = (512,),
        dropout: float = 0.2,
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        max_epochs: int = 200,
        batch_size: int = 256,
        val_fraction: float = 0.2,
        patience: int = 10,
        device: str = "auto",
        random_state: int | None = 0,
    ):
        self.hidden = hidden
        self.dropout = dropout
        self.lr = lr
        self.weight_decay = weight_decay
        self.max_epochs = max_epochs
        self.batch_size = batch_size
        self.val_fraction = val_fraction
        self.patience = patience
        self.device = device
        self.random_state = random_state

    def fit(self, X, y) -> MLPHead:
        """Standardize ``X`` and train the MLP, stopping early on the validation loss.

        Args:
            X: Features, shape ``(n_samples, n_features)``.
            y: Class labels, shape ``(n_samples,)``, or a 0/1 indicator matrix
                ``(n_samples, n_labels)`` for multi-label targets.

        Returns:
            The fitted head.

        Raises:
            DataError: If ``X`` is not finite, ``y`` has one class, or a class has fewer than
                2 examples so that no stratified validation split exists.
            ValueError: If a hyper-parameter is invalid.
        """
        import torch

        X, targets = self._validate_fit_data(X, y)
        self._check_params()
        name = type(self).__name__
        device = resolve_device(self.device, name)
        mean, scale = standardize_params(X)
        Z = torch.as_tensor((X - mean) / scale, dtype=torch.float32, device=device)
        if targets.multilabel:
            target = torch.as_tensor(targets.indicator, dtype=torch.float32, device=device)
            n_outputs = target.shape[1]
        else:
            target = torch.as_tensor(targets.codes, device=device)
            n_outputs = len(targets.classes)

        indices = np.arange(len(Z))
        val = None
        if self.val_fraction > 0:
            fix = "set val_fraction=0 to train for max_epochs without early stopping"
            indices, val = stratified_split(targets, self.val_fraction, self.random_state, name, fix)
            val = torch.as_tensor(val, device=device)
        train = torch.as_tensor(indices, device=device)

        seed = seed_from(self.random_state)
        forked_devices = [torch.device(device).index or 0] if device.startswith("cuda") else []
        with torch.random.fork_rng(devices=forked_devices):
            torch.manual_seed(seed)
            model = self._build(Z.shape[1], n_outputs).to(device)
            history = self._train(model, Z, target, train, val, targets.multilabel, seed)

        layers = [module for module in model if isinstance(module, torch.nn.Linear)]
        self.mean_ = mean
        self.scale_ = scale
        self.weights_ = [layer.weight.detach().cpu().numpy().copy() for layer in layers]
        self.biases_ = [layer.bias.detach().cpu().numpy().copy() for layer in layers]
        self.n_epochs_ = len(history["loss"])
        self.best_epoch_ = history["best_epoch"]
        self.loss_curve_ = history["loss"]
        self.val_loss_curve_ = history["val_loss"]
        self.classes_ = targets.classes
        self.multilabel_ = targets.multilabel
        return self

    def predict_proba(self, X) -> np.ndarray:
        """Return class probabilities ``(n, n_classes)``, or per-label probabilities ``(n, n_labels)``."""
        scores = self._forward(self._validate_predict_X(X))
        if self.multilabel_:
            return expit(scores)
        return softmax(scores, axis=1)

    def predict(self, X) -> np.ndarray:
        """Return class labels ``(n,)``, or a 0/1 indicator matrix ``(n, n_labels)`` for multi-label."""
        return self._predict_from_scores(self._forward(self._validate_predict_X(X)))

    def _forward(self, X: np.ndarray) -> np.ndarray:
        """Run the network in float64 numpy (dropout is off at prediction); return the logits."""
        hidden = (X - self.mean_) / self.scale_
        for weight, bias in zip(self.weights_[:-1], self.biases_[:-1]):
            hidden = np.maximum(hidden @ weight.T + bias, 0.0)
        return hidden @ self.weights_[-1].T + self.biases_[-1]

    def _hidden_widths(self) -> tuple:
        """Return ``hidden`` as a tuple (a single int means one hidden layer)."""
        if isinstance(self.hidden, numbers.Integral):
            return (self.hidden,)
        return tuple(self.hidden)

    def _check_params(self) -> None:
        """Raise a ``ValueError`` naming the first invalid hyper-parameter."""
        name = type(self).__name__
        widths = self._hidden_widths()
        if not all(isinstance(width, numbers.Integral) and width >= 1 for width in widths):
            raise ValueError(f"{name}: hidden must be a tuple of positive layer widths, got {self.hidden!r}.")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"{name}: dropout must be in [0, 1), got {self.dropout!r}.")
        for param in ("max_epochs", "batch_size", "patience"):
            value = getattr(self, param)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
                raise ValueError(f"{name}: {param} must be a positive integer, got {value!r}.")
        if not self.lr > 0:
            raise ValueError(f"{name}: lr must be positive, got {self.lr!r}.")
        if not self.weight_decay >= 0:
            raise ValueError(f"{name}: weight_decay must be non-negative, got {self.weight_decay!r}.")
        check_fraction(self.val_fraction, name, "val_fraction")

    def _build(self, n_inputs: int, n_outputs: int):
        """Build ``Linear -> ReLU -> Dropout`` per hidden layer, then the output ``Linear``."""
        import torch

        layers = []
        width_in = n_inputs
        for width in self._hidden_widths():
            layers.append(torch.nn.Linear(width_in, int(width)))
            layers.append(torch.nn.ReLU())
            layers.append(torch.nn.Dropout(self.dropout))
            width_in = int(width)
        layers.append(torch.nn.Linear(width_in, n_outputs))
        return torch.nn.Sequential(*layers)

    def _train(self, model, Z, target, train, val, multilabel: bool, seed: int) -> dict:
        """Train with AdamW; keep the weights of the epoch with the lowest validation loss."""
        import torch
        import torch.nn.functional as F

        loss_fn = F.binary_cross_entropy_with_logits if multilabel else F.cross_entropy
        optimizer = torch.optim.AdamW(model.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        generator = torch.Generator(device="cpu").manual_seed(seed)
        batch_size = min(self.batch_size, len(train))
        losses = []
        val_losses = []
        best_loss = np.inf
        best_epoch = 0
        best_state = None
        for epoch in range(1, self.max_epochs + 1):
            model.train()
            order = train[torch.randperm(len(train), generator=generator).to(train.device)]
            total = 0.0
            for start in range(0, len(order), batch_size):
                batch = order[start : start + batch_size]
                optimizer.zero_grad()
                loss = loss_fn(model(Z[batch]), target[batch])
                loss.backward()
                optimizer.step()
                total += loss.item() * len(batch)
            losses.append(total / len(order))
            if val is None:
                best_epoch = epoch
                continue
            model.eval()
            with torch.no_grad():
                val_loss = float(loss_fn(model(Z[val]), target[val]))
            val_losses.append(val_loss)
            if val_loss < best_loss:
                best_loss = val_loss
                best_epoch = epoch
                best_state = {key: value.clone() for key, value in model.state_dict().items()}
            elif epoch - best_epoch >= self.patience:
                break
        if best_state is not None:
            model.load_state_dict(best_state)
        model.eval()
        return {"loss": losses, "val_loss": val_losses, "best_epoch": best_epoch}
