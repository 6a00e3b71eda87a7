"""How models compute, chosen in one place per device type: the memory format of a run's models.

``benchmarks/engine.py`` measures the options side by side (memory format, ``torch.compile``,
batch size, thread count) on the attack loops and on training; what is faster there is the
default here, per device type:

- CPU: ``channels_last`` (NHWC) weights: faster than the default NCHW layout on LeNet-5 input
  gradients (the measured ratios are in ``benchmarks/RESULTS.md``). Inputs need no conversion:
  a one-channel NCHW batch is already channels_last in memory (its strides satisfy both).
- CUDA: ``contiguous`` (the default layout), until a lent GPU measures otherwise.

The memory format changes the order in which convolutions sum floats, so a model's outputs and
gradients differ in their last bits from the default layout's (about 5e-9 on LeNet-5 input
gradients) and a few borderline images can flip; ``tests/test_engine.py`` states and checks the
per-image agreement on real MNIST. Never silently mixed with earlier results: the policy
(``policy_text``) joins every cache key and every cell's code hash (``robench.plan``), the run
records the engine it used (``run.json``: ``engine``) and a cache entry records the layout its
model was trained in (``robench.cache.trained_with``).

``ROBENCH_ENGINE=contiguous`` (or ``channels_last``) overrides the choice for every device, e.g.
to reproduce numbers computed before this module existed bit for bit.

Not adopted (measured, see ``benchmarks/RESULTS.md``): ``torch.compile`` (its compile time, tens
of seconds per model and shape, is more than a cell saves on CPU, and a recompile per batch
size), other batch sizes and thread counts (machine-dependent; the thread count stays torch's
default or what an executor sets).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Literal, cast

import torch
from torch import nn

from robench.errors import UserError

ENGINE_ENV = "ROBENCH_ENGINE"
MemoryFormat = Literal["contiguous", "channels_last"]
FORMATS: dict[str, torch.memory_format] = {"contiguous": torch.contiguous_format,
                                           "channels_last": torch.channels_last}
#: the measured default per device type (a device type not listed gets ``contiguous``)
DEFAULTS: dict[str, MemoryFormat] = {"cpu": "channels_last", "cuda": "contiguous"}


@dataclass(frozen=True)
class Engine:
    """How a run's models compute on one device type."""

    device_type: str
    memory_format: MemoryFormat

    def prepare_model(self, model: nn.Module) -> nn.Module:
        """``model`` with its 4-d weights in this engine's memory format (in place; returned).
        Values are unchanged: only the layout in memory, so weight hashes stay the same."""
        return model.to(memory_format=FORMATS[self.memory_format])

    def prepare_inputs(self, x: torch.Tensor) -> torch.Tensor:
        """A 4-d image batch in this engine's memory format (a no-op for one-channel NCHW
        batches, which are both layouts at once)."""
        if x.dim() != 4:
            return x
        return x.contiguous(memory_format=FORMATS[self.memory_format])

    def record(self) -> dict[str, Any]:
        """What ``run.json`` records: the device type and its memory format."""
        return {"device_type": self.device_type, "memory_format": self.memory_format}


def override() -> MemoryFormat | None:
    """The memory format ``ROBENCH_ENGINE`` forces on every device, if set (a bad value is the
    user's error, one line naming the variable)."""
    value = os.environ.get(ENGINE_ENV, "").strip()
    if not value:
        return None
    if value not in FORMATS:
        raise UserError(f"unknown engine {value!r}; use {' or '.join(FORMATS)}",
                        where=f"${ENGINE_ENV}")
    return cast(MemoryFormat, value)  # checked against FORMATS just above


def engine_for(device: torch.device | str) -> Engine:
    """The engine of a device (its type's default, or the ``ROBENCH_ENGINE`` override)."""
    kind = torch.device(device).type
    return Engine(kind, override() or DEFAULTS.get(kind, "contiguous"))


def prepare_model(model: nn.Module, device: torch.device | str) -> nn.Module:
    """``model`` prepared for ``device`` by its engine (``engine_for``)."""
    return engine_for(device).prepare_model(model)


def policy_text() -> str:
    """The whole per-device choice as one short string, the same on every device: it joins the
    cache keys and the cells' code hashes, which are computed before the device is known, so a
    changed engine (default or override) never reuses a model or cell of another."""
    forced = override()
    kinds = sorted(DEFAULTS)
    return ",".join(f"{k}:{forced or DEFAULTS[k]}" for k in kinds) + ",other:" + (
        forced or "contiguous")


def model_memory_format(model: nn.Module) -> str:
    """The layout a model's 4-d weights are in (``channels_last``, ``contiguous``; ``none``
    when no weight tells them apart, e.g. no conv layer): what a cache entry records of how
    its model was trained. A weight with one input channel or a 1x1 kernel is both layouts at
    once and says nothing."""
    telling = [p for p in model.parameters()
               if p.dim() == 4 and p.shape[1] > 1 and p.shape[2] * p.shape[3] > 1]
    if not telling:
        return "none"
    if all(p.is_contiguous(memory_format=torch.channels_last) for p in telling):
        return "channels_last"
    return "contiguous" if all(p.is_contiguous() for p in telling) else "mixed"


__all__ = ["DEFAULTS", "ENGINE_ENV", "Engine", "engine_for", "model_memory_format", "override",
           "policy_text", "prepare_model"]
