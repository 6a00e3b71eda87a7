"""Units of work for time estimates: how many image passes a stage costs.

A plugin declares its cost (``Attack.work_per_image``, ``Defense.cost``) as a ``Work``: counts
of image passes of three kinds, because they cost different amounts per image on the same
machine (batch size, parameter gradients). ``robench.estimate`` turns a ``Work`` into seconds
with a calibration, and into one number of units for the overall progress bar of a run.
"""

from __future__ import annotations

from typing import NamedTuple

#: estimates and progress only: editing this module changes no result (see robench.codehash)
AFFECTS_RESULTS = False

#: a forward pass as a share of a forward+backward pass when nothing was calibrated: a backward
#: pass costs about two forwards (the usual rule for dense and convolutional layers)
FORWARD_SHARE = 1 / 3


class Work(NamedTuple):
    """Image passes: ``train`` forward+backward with parameter gradients (training at the
    suite's batch size), ``grad`` forward+backward to the input (attacks, batches of 1000),
    ``forward`` inference-only forward passes."""

    train: float = 0.0
    grad: float = 0.0
    forward: float = 0.0

    def __add__(self, other: object) -> Work:
        if not isinstance(other, Work):
            return NotImplemented
        return Work(self.train + other.train, self.grad + other.grad,
                    self.forward + other.forward)

    def __radd__(self, other: object) -> Work:
        return self if other == 0 else self.__add__(other)  # sum() starts from 0

    def __sub__(self, other: Work) -> Work:
        return Work(self.train - other.train, self.grad - other.grad,
                    self.forward - other.forward)

    def scaled(self, factor: float) -> Work:
        return Work(self.train * factor, self.grad * factor, self.forward * factor)

    @property
    def units(self) -> float:
        """One number for progress bars: forward+backward passes, forwards at ``FORWARD_SHARE``
        (the bar's rate, and so its ETA, is measured by tqdm itself)."""
        return self.train + self.grad + FORWARD_SHARE * self.forward


NO_WORK = Work()

__all__ = ["FORWARD_SHARE", "NO_WORK", "Work"]
