"""The baseline's output on the batches a run feeds it, checked before anything is written.

``robench.models.check_logits`` on two images finds a model that fails or returns something
other than logits; a model can still be right for two images and wrong for more (a reshape
to a fixed batch, a buffer of the probe's size). So the baseline is also run, in eval mode, on
batches of each size the run's own loops use with the whole baseline: a full batch and the
last partial one of evaluation (``robench.evaluation``) over the evaluation split and over
each attack's ``limit`` images (a transfer attack's source sees the same batches), of clean
accuracy (``robench.training.accuracy``), the diagnostics' sample (``robench.diagnostics``)
and, when it trains, of training. When the baseline trains, it is also run in train mode on
the training batch sizes: a model wrong only in train mode (dropout, batch norm, a branch on
``self.training``) would otherwise fail in the first training step, after the results folder
was written. A failure is the same one-line ``UserError`` naming the model, before the results
folder is opened.

The probe's model is a throwaway copy built and run inside ``torch.random.fork_rng``: its
train-mode passes update only its own batch-norm statistics, and the global RNG is left as it
was, so a run's numbers are those it computes without the probe.

Sizes an attack chooses itself (an active set shrinking as images are fooled, an attack's own
chunks) are not all probed; the run's own forward passes are checked instead
(``robench.output_guard``), mid-run.
"""

from __future__ import annotations

import inspect

import torch
from torch import nn

from robench.data import Dataset
from robench.diagnostics import GRADIENT_SAMPLE
from robench.errors import UserError
from robench.evaluation import EVAL_BATCH_SIZE
from robench.models import check_logits, describe_output
from robench.plan import Plan
from robench.training import accuracy

PROBE = 2  # the images of the first probe


def loop_sizes(batch: int, n: int) -> set[int]:
    """The batch sizes a loop of ``batch``-sized batches over ``n`` items feeds: a full one
    and the last partial one."""
    return {size for size in (min(batch, n), n % batch if n > batch else 0) if size > 0}


def n_evaluation(plan: Plan, dataset: Dataset) -> int:
    """The number of evaluation images of a run (``data.eval_limit`` of the test split)."""
    limit = plan.suite.data.eval_limit
    return min(limit or len(dataset.test), len(dataset.test))


def trains(plan: Plan) -> bool:
    """Whether a run of ``plan`` trains its baseline (unless the model cache has it)."""
    return plan.suite.train.epochs > 0 and plan.baseline.weights is None


def train_batch_sizes(plan: Plan, dataset: Dataset) -> list[int]:
    """The batch sizes (largest first) of the baseline's training; none when it does not
    train."""
    if not trains(plan):
        return []
    n_train = len(dataset.train) - plan.suite.data.validation_size
    return sorted(loop_sizes(plan.suite.train.batch_size, n_train), reverse=True)


def run_batch_sizes(plan: Plan, dataset: Dataset) -> list[int]:
    """The batch sizes (largest first, without the probe's) the baseline sees in eval mode in
    a run."""
    n_eval = n_evaluation(plan, dataset)
    # accuracy's own default, read from its signature so the two cannot drift apart
    accuracy_batch = inspect.signature(accuracy).parameters["batch_size"].default
    sizes = loop_sizes(EVAL_BATCH_SIZE, n_eval) | loop_sizes(accuracy_batch, n_eval)
    sizes.add(min(GRADIENT_SAMPLE, n_eval))
    for attack in plan.attacks:  # each attack's first `limit` images, in evaluation batches
        sizes |= loop_sizes(EVAL_BATCH_SIZE, min(attack.limit or n_eval, n_eval))
    sizes |= set(train_batch_sizes(plan, dataset))
    return sorted(sizes - {PROBE}, reverse=True)


def check_train_logits(model: nn.Module, x: torch.Tensor, num_classes: int, name: str,
                       where: str) -> None:
    """One forward pass of ``model`` in train mode on ``x`` (no gradients): float logits of
    shape ``(len(x), num_classes)``, else a ``UserError`` naming the model (``where``: the
    suite file). The model's batch-norm statistics change: give it a throwaway model."""
    model.train()
    try:
        with torch.no_grad():
            out = model(x)
    except (RuntimeError, TypeError, ValueError) as err:
        text = " ".join(str(err).split())[:160]
        raise UserError(f"model {name!r} fails in train mode on {tuple(x.shape)} inputs "
                        f"({type(err).__name__}: {text})", where=f"{where}: model.name") from None
    finally:
        model.eval()
    expected = (x.shape[0], num_classes)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != expected \
            or not out.is_floating_point():
        dtype = f" ({out.dtype})" if isinstance(out, torch.Tensor) else ""
        raise UserError(f"model {name!r} returns {describe_output(out)}{dtype} in train mode "
                        f"(training batches); expected float logits of shape {expected} for "
                        f"the dataset's {num_classes} classes", where=f"{where}: model.name")


def check_baseline(plan: Plan, dataset: Dataset) -> None:
    """The checkpoint fits and the baseline returns logits of the right shape for the probe
    and for every batch size of ``run_batch_sizes``, and in train mode for every size of
    ``train_batch_sizes`` (a ``UserError`` otherwise). The global RNG is left as it was."""
    spec = plan.baseline
    images = [dataset.test.images, dataset.train.images]
    with torch.random.fork_rng(devices=[]):  # leaves the global RNG as it was
        model = spec.build(dataset.num_classes)
        for size in [PROBE, *run_batch_sizes(plan, dataset)]:
            source = next((x for x in images if len(x) >= size), images[-1])
            check_logits(model, source[:size], dataset.num_classes, spec.model, spec.logits,
                         spec.source)
        for size in train_batch_sizes(plan, dataset):
            check_train_logits(model, dataset.train.images[:size], dataset.num_classes,
                               spec.model, spec.source)
