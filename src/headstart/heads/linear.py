"""The linear probe: logistic regression on frozen features, with C chosen on a validation split.

This follows the linear-evaluation protocol of Kornblith et al. (2019), as used by CLIP: standardize
the features, fit L2-regularized multinomial logistic regression for each C on a log grid, pick the C
with the best validation accuracy, then refit on train + validation with that C. Among C values of
equal validation accuracy, the one with the lowest validation log loss wins, so that a plateau of
equal accuracy does not pick its least confident (most regularized) end.

The search is fast for three reasons. The grid is walked from small C to large C, and each fit starts
from the previous solutions (a warm start, extrapolated linearly along the path), so L-BFGS needs few
iterations per grid point. These fits stop at a looser tolerance than the final fit (``search_tol``),
as they only rank the C values. And the walk stops once validation accuracy has peaked: after
``patience`` grid points in a row without a new best (neither a higher accuracy, nor an equal
accuracy with a lower loss), or after ``patience`` more points once validation accuracy is perfect
(then a larger C can only sharpen the probabilities). The large-C end of the grid, where L-BFGS is
slowest, is then seldom fitted.

The solver is a small torch L-BFGS that runs on a GPU when there is one. The products with the
features run in float32, which halves their (memory-bound) traffic and is what GPUs are fast at; the
loss, the parameters and the predictions are float64. The objective matches scikit-learn's
``LogisticRegression``: the mean of the (class-weighted) log losses plus ``||W||^2 / (2 C n)``; the
intercept is not penalized. Like scikit-learn, L-BFGS stops when no gradient entry exceeds ``tol``.
"""

from __future__ import annotations

import numbers

import numpy as np
from scipy.special import expit, softmax
from sklearn.utils.class_weight import compute_class_weight

from headstart.heads._base import (
    HeadBase,
    Targets,
    check_fraction,
    resolve_device,
    standardize_params,
    stratified_split,
)

DEFAULT_CS = np.logspace(-6, 5, 45)


class LinearProbe(HeadBase):
    """Multinomial logistic regression with C chosen by validation accuracy.

    Single-label targets get a softmax model (a single sigmoid for two classes, as in
    scikit-learn). Multi-label targets (a 2-D 0/1 indicator ``y``) get one sigmoid per label
    (one-vs-rest), and C is chosen by micro-averaged F1 on the validation split.

    Args:
        Cs: The C grid to search (the inverse regularization strength). ``None`` means
            ``np.logspace(-6, 5, 45)``. A single number fixes C and skips the search. C is picked
            by validation accuracy, and among equal accuracies by validation log loss.
        val_fraction: The share of the training data held out (stratified by class) to choose C.
            It must be above 0 when there is a grid to search.
        class_weight: ``None``, ``"balanced"`` or a dict ``{class: weight}``. The weights scale
            each example's loss, and also the validation accuracy that picks C (``"balanced"``
            then picks C by balanced accuracy). For multi-label targets, ``"balanced"`` weighs
            the positives and negatives of each label equally.
        patience: Stop the C search after this many grid points in a row without a new best, or
            this many points after validation accuracy becomes perfect. ``None`` searches the
            whole grid.
        max_iter: The most L-BFGS iterations for each C.
        tol: The final fit's L-BFGS stops when no gradient entry exceeds this.
        search_tol: The same, for the fits of the C search. It is looser than ``tol``: the search
            only ranks the C values, and each fit warm-starts the next.
        device: ``"auto"`` (a GPU when torch sees one, else the CPU), ``"cpu"`` or ``"cuda"``.
        random_state: Seed for the validation split.

    Attributes:
        classes_: The class labels (``arange(n_labels)`` for multi-label targets).
        multilabel_: Whether the head was fitted on multi-label targets.
        n_features_in_: The number of features seen in ``fit``.
        mean_: Per-feature mean used to standardize the features.
        scale_: Per-feature standard deviation used to standardize the features (1 where it is 0).
        coef_: Weights on the standardized features, shape ``(n_classes, n_features)``, or
            ``(1, n_features)`` for two classes, or ``(n_labels, n_features)`` for multi-label.
        intercept_: Intercepts, shape ``(n_classes,)``, ``(1,)`` or ``(n_labels,)``.
        C_: The chosen C.
        n_iter_: The L-BFGS iterations run in all, over the C search and the final refit.
        val_curve_: The ``(C, validation score)`` pairs evaluated, in order; empty when C was fixed.
        val_loss_curve_: The validation log loss at each C of ``val_curve_``.
    """

    _state_arrays = ("mean_", "scale_", "coef_", "intercept_")
    _state_meta = ("C_", "val_curve_", "val_loss_curve_", "n_iter_")

    def __init__(
        self,
        Cs: float | tuple[float, ...] | None = None,
        val_fraction: float = 0.2,
        class_weight: str | dict | None = None,
        patience: int | None = 5,
        max_iter: int = 200,
        tol: float = 1e-4,
        search_tol: float = 1e-3,
        device: str = "auto",
        random_state: int | None = 0,
    ):
        self.Cs = Cs
        self.val_fraction = val_fraction
        self.class_weight = class_weight
        self.patience = patience
        self.max_iter = max_iter
        self.tol = tol
        self.search_tol = search_tol
        self.device = device
        self.random_state = random_state

    def fit(self, X, y) -> LinearProbe:
        """Standardize ``X``, choose C on a validation split, and refit on all of ``X``.

        Args:
            X: Features, shape ``(n_samples, n_features)``.
            y: Class labels, shape ``(n_samples,)``, or a 0/1 indicator matrix
                ``(n_samples, n_labels)`` for multi-label targets.

        Returns:
            The fitted probe.

        Raises:
            DataError: If ``X`` is not finite, ``y`` has one class, or a class has fewer than
                2 examples so that no stratified validation split exists.
            ValueError: If a hyper-parameter is invalid.
        """
        import torch

        X, targets = self._validate_fit_data(X, y)
        name = type(self).__name__
        grid = self._grid()
        check_fraction(self.val_fraction, name, "val_fraction")
        patience_ok = isinstance(self.patience, numbers.Integral) and self.patience >= 1
        if self.patience is not None and not patience_ok:
            raise ValueError(f"{name}: patience must be a positive integer or None, got {self.patience!r}.")
        if len(grid) > 1 and self.val_fraction == 0:
            raise ValueError(
                f"{name}: val_fraction=0 leaves no validation data to choose C from {len(grid)} values. "
                "Set val_fraction above 0 (for example 0.2), or fix C with a single number (for example Cs=1.0)."
            )
        device = resolve_device(self.device, name)

        mean, scale = standardize_params(X)
        Z = torch.as_tensor((X - mean) / scale, dtype=torch.float32, device=device)
        weights = torch.as_tensor(self._example_weights(targets), dtype=torch.float64, device=device)
        kind, target = _torch_targets(targets, device)
        n_outputs = len(targets.classes) if kind == "softmax" else target.shape[1]
        W = torch.zeros(n_outputs, Z.shape[1], dtype=torch.float64, device=device)
        b = torch.zeros(n_outputs, dtype=torch.float64, device=device)

        C = float(grid[0])
        val_curve = []
        val_losses = []
        n_iter = 0
        if len(grid) > 1:
            fix = "set val_fraction=0 with a fixed C (for example Cs=1.0)"
            train, val = stratified_split(targets, self.val_fraction, self.random_state, name, fix)
            train = torch.as_tensor(train, device=device)
            val = torch.as_tensor(val, device=device)
            search = self._search(Z, kind, target, weights, train, val, grid, W, b)
            C, W, b, val_curve, val_losses, n_iter = search
        W, b, refit_iter = self._solve(Z, kind, target, weights, C, W, b, self.tol)

        self.mean_ = mean
        self.scale_ = scale
        self.coef_ = W.cpu().numpy().astype(np.float64)
        self.intercept_ = b.cpu().numpy().astype(np.float64)
        self.C_ = C
        self.val_curve_ = val_curve
        self.val_loss_curve_ = val_losses
        self.n_iter_ = n_iter + refit_iter
        self.classes_ = targets.classes
        self.multilabel_ = targets.multilabel
        return self

    def decision_function(self, X) -> np.ndarray:
        """Return the logits: shape ``(n,)`` for two classes, else ``(n, n_classes or n_labels)``."""
        X = self._validate_predict_X(X)
        scores = ((X - self.mean_) / self.scale_) @ self.coef_.T + self.intercept_
        if scores.shape[1] == 1:
            return scores[:, 0]
        return scores

    def predict_proba(self, X) -> np.ndarray:
        """Return class probabilities ``(n, n_classes)``, or per-label probabilities ``(n, n_labels)``."""
        scores = self.decision_function(X)
        if self.multilabel_:
            return expit(scores)
        if scores.ndim == 1:  # expit(-s), not 1 - expit(s): exact where the negative class's probability is tiny
            return np.column_stack([expit(-scores), expit(scores)])
        return softmax(scores, axis=1)

    def predict(self, X) -> np.ndarray:
        """Return class labels ``(n,)``, or a 0/1 indicator matrix ``(n, n_labels)`` for multi-label."""
        return self._predict_from_scores(self.decision_function(X))

    def _grid(self) -> np.ndarray:
        """Return the C grid as a sorted array of distinct positive numbers."""
        Cs = DEFAULT_CS if self.Cs is None else self.Cs
        if isinstance(Cs, numbers.Real):
            grid = np.array([float(Cs)])
        else:
            grid = np.unique(np.asarray(Cs, dtype=np.float64).ravel())
        if grid.size == 0 or not np.all(np.isfinite(grid)) or np.any(grid <= 0):
            raise ValueError(
                f"{type(self).__name__}: Cs must be a positive number or a non-empty sequence of positive "
                f"numbers, got {self.Cs!r}."
            )
        return grid

    def _example_weights(self, targets: Targets) -> np.ndarray:
        """Return loss weights, shape ``(n, 1)`` for single-label targets or ``(n, n_labels)``."""
        if targets.multilabel:
            if self.class_weight is None:
                return np.ones_like(targets.indicator)
            if self.class_weight != "balanced":
                raise ValueError(
                    f"{type(self).__name__}: multi-label targets support class_weight=None or 'balanced', "
                    f"got {self.class_weight!r}."
                )
            n = len(targets.indicator)
            positives = np.clip(targets.indicator.sum(axis=0), 1, None)
            negatives = np.clip(n - targets.indicator.sum(axis=0), 1, None)
            return np.where(targets.indicator == 1, n / (2 * positives), n / (2 * negatives))
        if self.class_weight is None:
            return np.ones((len(targets.codes), 1))
        per_class = compute_class_weight(
            self.class_weight, classes=targets.classes, y=targets.classes[targets.codes]
        )
        return per_class[targets.codes][:, None]

    def _search(self, Z, kind, target, weights, train, val, grid, W, b):
        """Walk the C grid upwards with warm starts, until validation accuracy has peaked.

        The best C has the highest validation score; among equal scores, the lowest validation
        loss wins (so that a plateau of equal accuracy does not pick its least confident end).
        The walk stops after ``patience`` points in a row without a new best, or once the score
        has been perfect for ``patience + 1`` points in a row.

        Returns:
            The best C, its ``(W, b)``, the ``(C, score)`` curve, the validation losses and the
            L-BFGS iterations run.
        """
        val_curve = []
        val_losses = []
        n_iter = 0
        best_score = -np.inf
        best_loss = np.inf
        best = (float(grid[0]), W, b)
        since_best = 0
        perfect = 0
        Z_train, target_train, weights_train = Z[train], target[train], weights[train]
        Z_val, target_val, weights_val = Z[val], target[val], weights[val]
        path = []  # the solutions so far
        for C in grid:
            C = float(C)
            if len(path) < 2:
                start = (W, b)
            else:
                # Predict the next solution by linear extrapolation along the (log-spaced) path;
                # starting there roughly halves the L-BFGS iterations of a plain warm start.
                (W_last, b_last), (W_before, b_before) = path[-1], path[-2]
                start = (2 * W_last - W_before, 2 * b_last - b_before)
            W, b, iterations = self._solve(
                Z_train, kind, target_train, weights_train, C, *start, self.search_tol
            )
            path.append((W, b))
            n_iter += iterations
            score, loss = _val_score(Z_val, kind, target_val, weights_val, W, b)
            val_curve.append((C, score))
            val_losses.append(loss)
            tied = abs(score - best_score) <= 1e-12
            if score > best_score + 1e-12 or (tied and loss < best_loss):
                best_score = score
                best_loss = loss
                best = (C, W, b)
                since_best = 0
            else:
                since_best += 1
            perfect = perfect + 1 if score >= 1.0 else 0
            if self.patience is not None and (since_best >= self.patience or perfect > self.patience):
                break
        C, W, b = best
        return C, W, b, val_curve, val_losses, n_iter

    def _solve(self, Z, kind, target, weights, C, W, b, tol):
        """Minimize the regularized log loss for one C with L-BFGS, starting from ``(W, b)``.

        Returns:
            The solution ``(W, b)`` and the number of L-BFGS iterations run.
        """
        import torch
        import torch.nn.functional as F

        n = Z.shape[0]
        W = W.clone()
        b = b.clone()
        optimizer = torch.optim.LBFGS(
            [W, b],
            lr=1.0,
            max_iter=self.max_iter,
            tolerance_grad=tol,
            tolerance_change=1e-12,
            history_size=10,
            line_search_fn="strong_wolfe",
        )
        penalty = 1.0 / (2.0 * C * n)
        if kind == "softmax":
            one_hot = F.one_hot(target, num_classes=W.shape[0]).to(W.dtype)

        def closure():
            # The gradient is written out (no autograd): for both softmax and sigmoid outputs, the
            # gradient of the log loss with respect to the logits is (probabilities - targets).
            logits = _logits(Z, W, b)
            if kind == "softmax":
                log_probabilities = torch.log_softmax(logits, dim=1)
                losses = -(log_probabilities * one_hot).sum(dim=1, keepdim=True)
                residuals = log_probabilities.exp() - one_hot
            else:
                losses = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
                residuals = torch.sigmoid(logits) - target
            loss = (weights * losses).sum() / n + penalty * (W * W).sum()
            logit_grad = weights * residuals / n
            W.grad = (logit_grad.T.to(Z.dtype) @ Z).to(W.dtype) + 2.0 * penalty * W
            b.grad = logit_grad.sum(dim=0)
            return loss

        with torch.no_grad():
            optimizer.step(closure)
        iterations = optimizer.state[W].get("n_iter", 0)
        return W, b, iterations


def _logits(Z, W, b):
    """Return ``Z @ W.T + b``, shape ``(n, n_outputs)``, in float64.

    The product with the features runs in float32 (``Z`` is float32), and the rest in float64, so
    that L-BFGS sees a loss precise enough to converge. The product is computed as ``(W @ Z.T).T``:
    with few outputs, BLAS is several times faster producing the wide ``(n_outputs, n)`` matrix
    (the gradient ``G.T @ Z`` is wide too).
    """
    import torch

    return (W.to(Z.dtype) @ Z.T).T.to(torch.float64) + b


def _torch_targets(targets: Targets, device: str):
    """Return ``("softmax", class indices)`` for 3+ classes, else ``("sigmoid", a 0/1 float matrix)``."""
    import torch

    if targets.multilabel:
        return "sigmoid", torch.as_tensor(targets.indicator, dtype=torch.float64, device=device)
    if len(targets.classes) == 2:
        return "sigmoid", torch.as_tensor(targets.codes[:, None], dtype=torch.float64, device=device)
    return "softmax", torch.as_tensor(targets.codes, device=device)


def _val_score(Z, kind: str, target, weights, W, b) -> tuple[float, float]:
    """Score a solution on validation rows.

    Returns:
        The score (weighted accuracy, or micro-F1 for multi-label targets) and the weighted mean
        log loss (summed over labels for multi-label targets).
    """
    import torch
    import torch.nn.functional as F

    with torch.no_grad():
        logits = _logits(Z, W, b)
        if kind == "softmax":
            example_weights = weights[:, 0]
            correct = (logits.argmax(dim=1) == target).double()
            losses = F.cross_entropy(logits, target, reduction="none")
            total = example_weights.sum()
            accuracy = float((example_weights * correct).sum() / total)
            return accuracy, float((example_weights * losses).sum() / total)
        losses = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
        loss = float((weights * losses).sum() / len(target))
        predicted = (logits > 0).double()
        if target.shape[1] == 1:
            correct = (predicted == target).double()
            return float((weights * correct).sum() / weights.sum()), loss
        true_positives = (predicted * target).sum()
        errors = (predicted != target).double().sum()
        denominator = 2 * true_positives + errors
        micro_f1 = float(2 * true_positives / denominator) if denominator > 0 else 1.0
        return micro_f1, loss
