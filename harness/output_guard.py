"""A check of the model's output on the run's real forward passes, beside the probe's.

``robench.probe`` runs the baseline, before anything is written, on every batch size a run's
own loops use; an attack still chooses sizes of its own mid-run (an active set shrinking as
images are fooled), and a defense returns another model. So while a model trains, is
inspected or is attacked, a forward hook (``guarded``) checks each output of the model's own
``forward``: float logits of shape ``(len(x), num_classes)``, else a one-line ``UserError``
naming what was running. The hook only reads the output, never replaces it and draws no
random numbers, so no number of a run changes; it is removed when the block ends, so no model
is returned, cached, shipped or pickled with it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import nn

from robench.errors import UserError
from robench.models import describe_output


class OutputGuard:
    """A forward hook (a plain class, so a model holding it still pickles): every output must
    be float logits for ``num_classes`` classes, one row per input."""

    def __init__(self, num_classes: int, what: str, where: str) -> None:
        self.num_classes = num_classes
        self.what = what
        self.where = where

    def __call__(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        x = args[0] if args else None
        if not isinstance(x, torch.Tensor) or x.dim() < 2:
            return  # not a batch of inputs (a caller of its own): nothing to compare with
        expected = (int(x.shape[0]), self.num_classes)
        if isinstance(output, torch.Tensor) and output.is_floating_point() \
                and tuple(output.shape) == expected:
            return
        dtype = f" ({output.dtype})" if isinstance(output, torch.Tensor) else ""
        raise UserError(f"the model returns {describe_output(output)}{dtype} on a batch of "
                        f"{expected[0]} images {self.what}; expected float logits of shape "
                        f"{expected} for the dataset's {self.num_classes} classes",
                        where=self.where)


@contextlib.contextmanager
def guarded(models: Iterable[nn.Module | None], num_classes: int | None, what: str,
            where: str) -> Iterator[None]:
    """Within the block, every forward of each model in ``models`` (None entries skipped) is
    checked by an ``OutputGuard``; nothing is checked when ``num_classes`` is None."""
    handles = [] if num_classes is None else [
        m.register_forward_hook(OutputGuard(num_classes, what, where))
        for m in models if m is not None]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


__all__ = ["OutputGuard", "guarded"]
