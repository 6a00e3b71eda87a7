"""The tasks both executors run (``robench.tasks``): a defense's metrics cannot be lost, whether
its plugin returns the rows it logged or not, and they are never counted twice."""

from __future__ import annotations

from typing import Any

import pandas as pd
import pytest
import torch
import yaml

from robench.cache import ModelCache
from robench.config import parse_suite
from robench.defenses.base import DEFENSES, Defense, DefenseContext, DefenseResult
from robench.models import LeNet5
from robench.plan import resolve
from robench.progress import Reporter
from robench.runner import RunOptions, run_suite
from robench.tasks import RunContext, apply_defense, recorded_metrics
from robench.training import TrainConfig
from robench.work import Work

FORGETFUL = "forgetful_metrics_test"


class Forgetful(Defense):
    """Logs one metric with ``ctx.log_metric`` and returns the model without ``metrics=``."""

    cacheable = False

    @classmethod
    def cost(cls, params: Any, train_config: TrainConfig, n_train: int,
             n_validation: int) -> Work:
        return Work()

    def apply(self, ctx: DefenseContext) -> DefenseResult:
        ctx.log_metric(0, "probe", 0.25)
        return DefenseResult(model=ctx.model)


@pytest.fixture
def forgetful(monkeypatch):
    monkeypatch.setitem(DEFENSES._entries, FORGETFUL, Forgetful)  # removed after the test
    return FORGETFUL


def test_recorded_metrics_are_the_returned_rows_else_the_logged_ones():
    logged = [{"step": 0, "metric": "a", "value": 1.0}]
    assert recorded_metrics(logged, logged) == logged                # metrics=ctx.metrics
    assert recorded_metrics(logged, []) == logged                    # no metrics= at all
    assert recorded_metrics(logged, list(logged)) == logged          # a copy of them
    extra = {"step": 1, "metric": "b", "value": 2.0}
    assert recorded_metrics(logged, [extra]) == [extra]              # a summary of its own
    assert recorded_metrics([], [extra]) == [extra]
    # returned rows are kept as returned: never merged with the logged ones by comparing rows
    nan = [{"step": 0, "metric": "a", "value": float("nan")}]
    assert len(recorded_metrics(nan, [dict(nan[0])])) == 1           # NaN != NaN: not doubled
    tagged = [{**logged[0], "phase": "train"}]
    assert recorded_metrics(logged, tagged) == tagged                # tagged copies: once
    twice = [dict(logged[0]), dict(logged[0])]
    assert recorded_metrics(logged, twice) == twice                  # a repeated row: kept


def test_a_defense_that_does_not_return_its_metrics_keeps_them(forgetful, mnist):
    plan = resolve(parse_suite({"name": "m", "data": {"dataset": "mnist"},
                                "defenses": [{"name": forgetful}],
                                "attacks": [{"name": "fgsm", "eps": [0.1]}]}, "m"), "m")
    ctx = RunContext(device=torch.device("cpu"), cache=ModelCache(enabled=False), data_hash="d",
                     num_classes=10, train_config=plan.suite.train,
                     reporter=Reporter(quiet=True))
    done = apply_defense(plan.defenses[0], LeNet5(), mnist.train.head(10), mnist.train.head(10),
                         ctx)
    assert done.metrics == [{"step": 0, "metric": "probe", "value": 0.25}]


def test_its_metrics_reach_defense_metrics_csv(forgetful, tmp_path, mnist_root, monkeypatch):
    monkeypatch.setenv("ROBENCH_CACHE_DIR", str(tmp_path / "cache"))
    torch.manual_seed(0)
    torch.save(LeNet5().state_dict(), tmp_path / "lenet.pt")
    suite = tmp_path / "s.yaml"
    suite.write_text(yaml.safe_dump({
        "name": "metrics", "data": {"dataset": "mnist", "eval_limit": 20},
        "model": {"name": "lenet5", "weights": "lenet.pt"},
        "defenses": [{"name": "none"}, {"name": forgetful}],
        "attacks": [{"name": "fgsm", "eps": [0.1]}]}))
    out = tmp_path / "out"
    run_suite(suite, RunOptions(data_dir=str(mnist_root), out=str(out), quiet=True))
    metrics = pd.read_csv(out / "defense_metrics.csv")
    assert metrics[["defense", "seed", "method", "step", "metric", "value"]].values.tolist() \
        == [[forgetful, 0, forgetful, 0, "probe", 0.25]]
