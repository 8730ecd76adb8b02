"""Networks of the learned posteriors: embedding nets for the data and the conditional vector field.

The vector field ``v(z_t, t | x)`` is a residual MLP (Wildberger, Dax et al. 2023): ``z_t`` and the
context ``c = (time features of t, embedded x)`` enter the first layer, and every residual block is
gated by the context through a gated linear unit, ``h + r(h) * sigmoid(W c + b)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from enff.registry import Registry

__all__ = ["ACTIVATIONS", "EMBEDDINGS", "Activation", "EmbeddingConfig", "EmbeddingKind", "NetworkConfig",
           "ConditionalFlow", "PeriodicConvEmbedding", "build_embedding", "make_activation", "seeded_init"]

#: Names of the activation functions a network configuration may give.
Activation = Literal["gelu", "silu", "relu", "tanh"]

#: Activation name -> module class.
ACTIVATIONS: Registry[type[nn.Module]] = Registry("activation")
for _name, _module in (("gelu", nn.GELU), ("silu", nn.SiLU), ("relu", nn.ReLU), ("tanh", nn.Tanh)):
    ACTIVATIONS.register(_name)(_module)


def make_activation(name: Activation) -> nn.Module:
    """A new activation module of the registered ``name``; ``ValueError`` listing the known names otherwise."""
    return ACTIVATIONS.get_entry(name)()


#: Names of the embedding networks (:data:`EMBEDDINGS`).
EmbeddingKind = Literal["identity", "mlp", "periodic_conv"]


@dataclass(frozen=True)
class EmbeddingConfig:
    """Embedding network for the conditioning data ``x``.

    Attributes
    ----------
    kind:
        A registered embedding (:data:`EMBEDDINGS`): ``"identity"`` (raw z-scored ``x``; for a few
        dimensions), ``"mlp"`` (vectors) or
        ``"periodic_conv"`` (fields on a periodic 1-D grid: ``x`` of shape ``(batch, channels * sites)``
        is read as ``(batch, channels, sites)``; circular convolutions and a mean over sites make the
        embedding invariant to shifts of the grid and usable for any number of sites).
    hidden_features:
        Widths of the MLP's hidden layers (``"mlp"``).
    out_features:
        Size of the embedding (``"mlp"``, ``"periodic_conv"``).
    channels:
        Input channels per site (``"periodic_conv"``), e.g. the number of observation times.
    conv_channels:
        Output channels of each circular convolution (``"periodic_conv"``).
    kernel_size:
        Odd kernel width in sites (``"periodic_conv"``).
    """

    kind: EmbeddingKind = "identity"
    hidden_features: tuple[int, ...] = (64, 64)
    out_features: int = 32
    channels: int = 1
    conv_channels: tuple[int, ...] = (16, 32)
    kernel_size: int = 3

    def __post_init__(self) -> None:
        EMBEDDINGS.get_entry(self.kind)  # an unknown kind is refused, naming the known ones
        if self.kernel_size % 2 != 1:
            raise ValueError(f"embedding kernel_size must be odd, got {self.kernel_size!r}")


@dataclass(frozen=True)
class NetworkConfig:
    """Architecture of the conditional vector field.

    Attributes
    ----------
    hidden_features:
        Width of each residual block (a block whose width changes has a linear skip projection).
    time_features:
        Number of Fourier features of ``t`` (even); ``t`` itself is always included.
    activation:
        A registered activation (:data:`ACTIVATIONS`): ``"gelu"``, ``"silu"``, ``"relu"`` or ``"tanh"``.
    embedding:
        Embedding network for ``x``.
    """

    hidden_features: tuple[int, ...] = (64, 128, 128, 64)
    time_features: int = 8
    activation: Activation = "gelu"
    embedding: EmbeddingConfig = field(default_factory=EmbeddingConfig)

    def __post_init__(self) -> None:
        if not self.hidden_features or min(self.hidden_features) < 1:
            raise ValueError(f"hidden_features must be non-empty positive widths, got {self.hidden_features!r}")
        if self.time_features < 0 or self.time_features % 2:
            raise ValueError(f"time_features must be even and >= 0, got {self.time_features!r}")
        ACTIVATIONS.get_entry(self.activation)


class _MLPEmbedding(nn.Sequential):
    def __init__(self, in_features: int, hidden: tuple[int, ...], out_features: int, activation: Activation) -> None:
        layers: list[nn.Module] = []
        for width in hidden:
            layers += [nn.Linear(in_features, width), make_activation(activation)]
            in_features = width
        super().__init__(*layers, nn.Linear(in_features, out_features))


class PeriodicConvEmbedding(nn.Module):
    """Circular 1-D convolutions, then a mean over sites and a linear map.

    Input ``(batch, channels * sites)`` (channel-major: all sites of channel 0 first), output
    ``(batch, out_features)``. Invariant to cyclic shifts of the sites.
    """

    def __init__(self, channels: int, conv_channels: tuple[int, ...], kernel_size: int, out_features: int,
                 activation: Activation) -> None:
        super().__init__()
        self.channels = channels
        layers: list[nn.Module] = []
        c_in = channels
        for c_out in conv_channels:
            layers += [nn.Conv1d(c_in, c_out, kernel_size, padding=kernel_size // 2, padding_mode="circular"),
                       make_activation(activation)]
            c_in = c_out
        self.convs = nn.Sequential(*layers)
        self.out = nn.Linear(c_in, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] % self.channels:
            raise ValueError(f"periodic_conv embedding needs x.shape[1] divisible by channels={self.channels}, "
                             f"got x of shape {tuple(x.shape)}")
        h = self.convs(x.reshape(x.shape[0], self.channels, -1))
        return self.out(h.mean(dim=2))


#: ``build(config, x_dim, activation) -> (net, out_dim)``: an embedding network for data of ``x_dim`` features.
EmbeddingBuilder = Callable[["EmbeddingConfig", int, Activation], tuple[nn.Module, int]]

#: Embedding kind (:data:`EmbeddingKind`) -> builder.
EMBEDDINGS: Registry[EmbeddingBuilder] = Registry("embedding kind")


@EMBEDDINGS.register("identity")
def _identity_embedding(config: EmbeddingConfig, x_dim: int, act: Activation) -> tuple[nn.Module, int]:
    return nn.Identity(), x_dim


@EMBEDDINGS.register("mlp")
def _mlp_embedding(config: EmbeddingConfig, x_dim: int, act: Activation) -> tuple[nn.Module, int]:
    return _MLPEmbedding(x_dim, config.hidden_features, config.out_features, act), config.out_features


@EMBEDDINGS.register("periodic_conv")
def _periodic_conv_embedding(config: EmbeddingConfig, x_dim: int, act: Activation) -> tuple[nn.Module, int]:
    return (PeriodicConvEmbedding(config.channels, config.conv_channels, config.kernel_size, config.out_features,
                                  act), config.out_features)


def build_embedding(config: EmbeddingConfig, x_dim: int, activation: Activation) -> tuple[nn.Module, int]:
    """Build the embedding network of ``config`` for data of ``x_dim`` features; returns ``(net, out_dim)``."""
    return EMBEDDINGS.get_entry(config.kind)(config, x_dim, activation)


class _GatedResidualBlock(nn.Module):
    """``skip(h) + r(h) * sigmoid(W c + b)`` with ``r`` two linear layers and activations."""

    def __init__(self, in_features: int, out_features: int, context_features: int, activation: Activation) -> None:
        super().__init__()
        self.residual = nn.Sequential(make_activation(activation), nn.Linear(in_features, out_features),
                                      make_activation(activation), nn.Linear(out_features, out_features))
        self.gate = nn.Linear(context_features, out_features)
        self.skip = nn.Identity() if in_features == out_features else nn.Linear(in_features, out_features)

    def forward(self, h: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return self.skip(h) + self.residual(h) * torch.sigmoid(self.gate(c))


def seeded_init(seed: int, build: Callable[[], nn.Module]) -> nn.Module:
    """``build()`` with its initial weights drawn from ``seed``; the global torch generator is left as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


class ConditionalFlow(nn.Module):
    """Embedding net plus gated residual vector field ``v(z_t, t | x)``.

    Parameters
    ----------
    dim:
        Dimension of the transported variable ``z``.
    x_dim:
        Number of features of the conditioning data ``x``.
    config:
        Architecture.
    """

    def __init__(self, dim: int, x_dim: int, config: NetworkConfig) -> None:
        super().__init__()
        self.embedding, embed_dim = build_embedding(config.embedding, x_dim, config.activation)
        self.register_buffer("frequencies", math.pi * torch.arange(1, config.time_features // 2 + 1,
                                                                   dtype=torch.float32))
        context = 1 + config.time_features + embed_dim
        widths = config.hidden_features
        self.inp = nn.Linear(dim + context, widths[0])
        self.blocks = nn.ModuleList(_GatedResidualBlock(a, b, context, config.activation)
                                    for a, b in zip((widths[0], *widths), widths))
        self.out = nn.Sequential(make_activation(config.activation), nn.Linear(widths[-1], dim))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Embed conditioning data ``x`` of shape ``(batch, x_dim)``; returns ``(batch, embed_dim)``."""
        return self.embedding(x)

    def forward(self, z: torch.Tensor, t: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        """Velocity at ``z`` ``(batch, dim)``, times ``t`` ``(batch,)``, embedded data ``e`` ``(batch, embed_dim)``."""
        angles = t[:, None] * self.frequencies
        c = torch.cat([t[:, None], torch.sin(angles), torch.cos(angles), e], dim=1)
        h = self.inp(torch.cat([z, c], dim=1))
        for block in self.blocks:
            h = block(h, c)
        return self.out(h)
