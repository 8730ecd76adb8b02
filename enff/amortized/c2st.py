"""Classifier two-sample test (C2ST) with the recipe of the sbibm benchmark.

Both samples are z-scored with the mean and standard deviation of the first; a scikit-learn
``MLPClassifier`` (two ReLU hidden layers of ``10 * dim`` units, Adam, up to 10,000 iterations)
is scored by ``n_folds``-fold shuffled cross-validated accuracy. 0.5 means indistinguishable
samples, 1.0 perfectly separable ones. Needs ``scikit-learn``.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["c2st"]


def c2st(a: torch.Tensor, b: torch.Tensor, *, seed: int = 1, n_folds: int = 5) -> float:
    """Cross-validated accuracy of a classifier telling ``a`` from ``b``.

    Parameters
    ----------
    a, b:
        Samples of shape ``(n_a, dim)`` and ``(n_b, dim)`` (use equal sizes: accuracy is only
        comparable to 0.5 for balanced classes).
    seed:
        Seed of the classifier initialisation and of the fold split.
    n_folds:
        Number of cross-validation folds.

    Returns
    -------
    Mean accuracy over the folds.
    """
    from sklearn.model_selection import KFold, cross_val_score  # optional dependency
    from sklearn.neural_network import MLPClassifier

    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"c2st needs a (n_a, dim) and b (n_b, dim), got {tuple(a.shape)} and {tuple(b.shape)}")
    if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
        raise ValueError("c2st samples a and b must be finite")
    a64, b64 = a.detach().double().cpu(), b.detach().double().cpu()
    mean, std = a64.mean(dim=0), a64.std(dim=0)
    data = torch.cat([(a64 - mean) / std, (b64 - mean) / std]).numpy()
    target = np.concatenate([np.zeros(a.shape[0]), np.ones(b.shape[0])])
    dim = a.shape[1]
    classifier = MLPClassifier(activation="relu", hidden_layer_sizes=(10 * dim, 10 * dim), max_iter=10_000,
                               solver="adam", random_state=seed)
    folds = KFold(n_splits=n_folds, shuffle=True, random_state=seed)
    return float(np.mean(cross_val_score(classifier, data, target, cv=folds, scoring="accuracy")))
