"""Bottleneck adapters and the way they enter transformers' layers without renaming anything.

An adapter is ``Linear(d, d/r) -> ReLU -> Linear(d/r, d)`` (r = 4). It sits on the output of a
projection ``nn.Linear`` of the base network in one of three modes (docs/method.md §3):

- ``residual`` (Swin): ``y = W x + b``, output ``y + adapter(y)``;
- ``replace`` (stage-one decoder side): output ``adapter(x)``; the pre-trained projection stays in the
  module (and in the state dict, frozen) but is not used;
- ``follow`` (stage-two decoder side): output ``adapter(W x + b)``.

The projection is *promoted* in place to :class:`AdaptedLinear`, a subclass of ``nn.Linear``, by
changing its class (the way ``torch.nn.utils.parametrize`` does): its weight and bias keep their
names and values, so base checkpoints load unchanged, and the adapter appears as
``<projection>.adapter.{0,2}.{weight,bias}``.
"""

from __future__ import annotations

from typing import Literal, TypeVar, cast

import torch
from torch import nn

AdapterMode = Literal["residual", "replace", "follow"]
ADAPTER_MODES = ("residual", "replace", "follow")

M = TypeVar("M", bound=nn.Module)


def promote(module: nn.Module, cls: type[M]) -> M:
    """Turn ``module`` into an instance of ``cls``, a subclass of its own class, keeping its state.

    ``cls`` must not need an ``__init__`` of its own: callers add the new parts right after.
    """
    if not issubclass(cls, type(module)):
        raise TypeError(f"{cls.__name__} is not a subclass of {type(module).__name__}")
    module.__class__ = cls
    return module  # type: ignore[return-value]


class BottleneckAdapter(nn.Sequential):
    """``[..., d] -> [..., d]`` through a ``d // reduction`` bottleneck with a ReLU."""

    def __init__(self, dim: int, reduction: int = 4) -> None:
        hidden = dim // reduction
        super().__init__(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, dim))

    def _linears(self) -> tuple[nn.Linear, nn.Linear]:
        """The down and the up projection (``nn.Sequential`` indexes as plain modules)."""
        return cast(nn.Linear, self[0]), cast(nn.Linear, self[2])

    @torch.no_grad()
    def normal_(self, std: float) -> BottleneckAdapter:
        """Weights N(0, std), biases zero: what transformers 4.35's Mask2Former ``_init_weights`` gave a
        Linear inside the pixel-level module (Swin and pixel decoder) that the checkpoint lacked."""
        for layer in self._linears():
            nn.init.normal_(layer.weight, mean=0.0, std=std)
            nn.init.zeros_(layer.bias)
        return self

    @torch.no_grad()
    def xavier_uniform_(self, gain: float = 1.0) -> BottleneckAdapter:
        """Xavier-uniform weights, biases zero: what transformers 4.35's Mask2Former ``_init_weights`` gave a
        Linear inside a masked-attention decoder layer that the checkpoint lacked."""
        for layer in self._linears():
            nn.init.xavier_uniform_(layer.weight, gain=gain)
            nn.init.zeros_(layer.bias)
        return self

    @torch.no_grad()
    def zero_(self) -> BottleneckAdapter:
        for p in self.parameters():
            p.zero_()
        return self


class AdaptedLinear(nn.Linear):
    """An ``nn.Linear`` of the base network with a bottleneck adapter on its output (see module doc)."""

    adapter: BottleneckAdapter
    adapter_mode: AdapterMode

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [..., in_features]
        if self.adapter_mode == "replace":
            return self.adapter(x)
        y = super().forward(x)  # [..., out_features]
        if self.adapter_mode == "residual":
            return y + self.adapter(y)
        return self.adapter(y)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, adapter_mode={self.adapter_mode}"


def attach_adapter(linear: nn.Linear, mode: AdapterMode, reduction: int = 4) -> AdaptedLinear:
    """Promote ``linear`` to :class:`AdaptedLinear` with a fresh adapter of width ``out_features``."""
    if mode not in ADAPTER_MODES:
        raise ValueError(f"adapter mode {mode!r}: expected one of {ADAPTER_MODES}")
    if isinstance(linear, AdaptedLinear):
        raise ValueError("this projection already has an adapter")
    if mode == "replace" and linear.in_features != linear.out_features:
        raise ValueError(f"only a square projection can be replaced, got {linear.in_features} -> {linear.out_features}")
    adapter = BottleneckAdapter(linear.out_features, reduction).to(linear.weight.device, linear.weight.dtype)
    adapted = promote(linear, AdaptedLinear)
    adapted.adapter = adapter
    adapted.adapter_mode = mode
    return adapted
