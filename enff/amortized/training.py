"""Mini-batch training with a held-out validation split, early stopping and a progress bar."""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

from enff.progress import tqdm_disable

__all__ = ["TrainingConfig", "TrainingHistory", "train"]

#: ``loss(indices, generator)``: mean loss over the training examples ``indices`` (a 1-D long tensor),
#: drawing its random path points from ``generator``.
BatchLoss = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


@dataclass(frozen=True)
class TrainingConfig:
    """Optimisation settings.

    Attributes
    ----------
    batch_size:
        Examples per gradient step.
    learning_rate:
        Initial Adam learning rate; halved when the validation loss stalls for ``decay_patience`` epochs.
    max_epochs:
        Upper bound on passes over the training split.
    validation_fraction:
        Fraction of the examples held out (at least one example) for early stopping.
    patience:
        Epochs without a new best validation loss before training stops; the best weights are kept.
    decay_patience:
        Epochs without a new best validation loss before the learning rate is halved (``None``:
        ``patience // 2``; halving sooner stops training before the samples are good).
    validation_repeats:
        Independent path points drawn per validation example; the flow-matching loss of one draw is
        noisy, and a noisy validation loss stops training (and decays the learning rate) too early.
    max_grad_norm:
        Gradient-norm clip.
    progress:
        Show a tqdm bar: ``None`` shows it only on a terminal.
    """

    batch_size: int = 128
    learning_rate: float = 1e-3
    max_epochs: int = 500
    validation_fraction: float = 0.1
    patience: int = 20
    decay_patience: int | None = None
    validation_repeats: int = 8
    max_grad_norm: float = 10.0
    progress: bool | None = None

    def __post_init__(self) -> None:
        if min(self.batch_size, self.max_epochs, self.patience, self.validation_repeats) < 1:
            raise ValueError(f"batch_size, max_epochs, patience and validation_repeats must be >= 1, got "
                             f"{self.batch_size!r}, {self.max_epochs!r}, {self.patience!r}, {self.validation_repeats!r}")
        if self.decay_patience is not None and self.decay_patience < 0:
            raise ValueError(f"decay_patience must be >= 0 or None, got {self.decay_patience!r}")
        if not 0 < self.validation_fraction < 1:
            raise ValueError(f"validation_fraction must be in (0, 1), got {self.validation_fraction!r}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate!r}")


@dataclass
class TrainingHistory:
    """What training did: per-epoch mean losses, the epoch whose weights were kept, steps and seconds."""

    train_loss: list[float] = field(default_factory=list)
    validation_loss: list[float] = field(default_factory=list)
    best_epoch: int = -1
    n_steps: int = 0
    seconds: float = 0.0


def train(module: nn.Module, loss: BatchLoss, n_examples: int, config: TrainingConfig,
          generator: torch.Generator) -> TrainingHistory:
    """Train ``module`` in place on ``loss`` and restore the weights with the best validation loss.

    Parameters
    ----------
    module:
        Network whose parameters are optimised.
    loss:
        Batch loss over example indices (see :data:`BatchLoss`).
    n_examples:
        Number of examples; a random ``validation_fraction`` of them is held out.
    config:
        Optimisation settings.
    generator:
        Source of the split, the batches and the path points (a CPU generator for CPU data).

    Returns
    -------
    The training history.
    """
    n_val = max(1, round(config.validation_fraction * n_examples))
    if n_examples - n_val < 1:
        raise ValueError(f"need at least 2 examples to hold out a validation split, got {n_examples}")
    device = generator.device
    order = torch.randperm(n_examples, generator=generator, device=device)
    val_idx, train_idx = order[:n_val], order[n_val:]
    val_seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=device))
    optimizer = torch.optim.Adam(module.parameters(), lr=config.learning_rate)
    decay_patience = max(1, config.patience // 2) if config.decay_patience is None else config.decay_patience
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.5, patience=decay_patience)
    history = TrainingHistory()
    best, best_state, stale = math.inf, copy.deepcopy(module.state_dict()), 0
    start = time.perf_counter()
    batch = min(config.batch_size, len(train_idx))
    bar = tqdm(range(config.max_epochs), disable=tqdm_disable(config.progress),
               desc="training", leave=False)
    for epoch in bar:
        module.train()
        perm = train_idx[torch.randperm(len(train_idx), generator=generator, device=device)]
        total = 0.0
        n_batches = len(perm) // batch
        for b in range(n_batches):
            value = loss(perm[b * batch:(b + 1) * batch], generator)
            optimizer.zero_grad(set_to_none=True)
            value.backward()
            nn.utils.clip_grad_norm_(module.parameters(), config.max_grad_norm)
            optimizer.step()
            total += value.item()
        history.n_steps += n_batches
        module.eval()
        with torch.no_grad():
            val_gen = torch.Generator(device=device).manual_seed(val_seed)
            val = float(loss(val_idx.repeat(config.validation_repeats), val_gen))
        history.train_loss.append(total / n_batches)
        history.validation_loss.append(val)
        scheduler.step(val)
        bar.set_postfix(train=f"{total / n_batches:.4f}", val=f"{val:.4f}")
        if val < best:
            best, best_state, stale, history.best_epoch = val, copy.deepcopy(module.state_dict()), 0, epoch
        else:
            stale += 1
            if stale >= config.patience:
                break
    bar.close()
    module.load_state_dict(best_state)
    module.eval()
    history.seconds = time.perf_counter() - start
    return history
