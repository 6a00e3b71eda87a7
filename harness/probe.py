"""The baseline's output on the batches a run feeds it, checked before anything is written.

``robench.models.check_logits`` on two images finds a model that fails or returns something
other than logits; a model can still be right for two images and wrong for more (a reshape
to a fixed batch, a buffer of the probe's size). So the baseline is also run, in eval mode, on
batches of each size the run's own loops use with the whole baseline: a full batch and the
last partial one of evaluation (``robench.evaluation``), of clean accuracy
(``robench.training.accuracy``) and, when it trains, of training. A failure is the same
one-line ``UserError`` naming the model, before the results folder is opened.

Sizes an attack chooses itself (an active set shrinking as images are fooled, an attack's own
chunks) are not all probed: a model wrong for some of them still fails mid-run.
"""

from __future__ import annotations

import inspect

import torch

from robench.data import Dataset
from robench.evaluation import EVAL_BATCH_SIZE
from robench.models import check_logits
from robench.plan import Plan
from robench.training import accuracy

PROBE = 2  # the images of the first probe


def loop_sizes(batch: int, n: int) -> set[int]:
    """The batch sizes a loop of ``batch``-sized batches over ``n`` items feeds: a full one
    and the last partial one."""
    return {size for size in (min(batch, n), n % batch if n > batch else 0) if size > 0}


def run_batch_sizes(plan: Plan, dataset: Dataset) -> list[int]:
    """The batch sizes (largest first, without the probe's) the baseline sees in a run."""
    data = plan.suite.data
    n_eval = min(data.eval_limit or len(dataset.test), len(dataset.test))
    # accuracy's own default, read from its signature so the two cannot drift apart
    accuracy_batch = inspect.signature(accuracy).parameters["batch_size"].default
    sizes = loop_sizes(EVAL_BATCH_SIZE, n_eval) | loop_sizes(accuracy_batch, n_eval)
    if plan.suite.train.epochs > 0 and plan.baseline.weights is None:
        n_train = len(dataset.train) - data.validation_size
        sizes |= loop_sizes(plan.suite.train.batch_size, n_train)
    return sorted(sizes - {PROBE}, reverse=True)


def check_baseline(plan: Plan, dataset: Dataset) -> None:
    """The checkpoint fits and the baseline returns logits of the right shape for the probe
    and for every batch size of ``run_batch_sizes`` (a ``UserError`` otherwise)."""
    spec = plan.baseline
    with torch.random.fork_rng(devices=[]):  # leaves the global RNG as it was
        model = spec.build(dataset.num_classes)
    images = [dataset.test.images, dataset.train.images]
    for size in [PROBE, *run_batch_sizes(plan, dataset)]:
        source = next((x for x in images if len(x) >= size), images[-1])
        check_logits(model, source[:size], dataset.num_classes, spec.model, spec.logits,
                     spec.source)
