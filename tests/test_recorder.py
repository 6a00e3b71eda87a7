"""The recorder (robench.recorder): what it records about a defense's metric rows."""


def test_a_metric_row_cannot_name_another_defense_or_seed():
    """A hostile-user finding: a (cached) metric row's own ``defense``/``seed`` keys overrode
    the recorder's, so defense_metrics.csv could credit a row to another defense."""
    from types import SimpleNamespace

    from robench.recorder import RunRecorder

    holder = SimpleNamespace(metric_rows=[], write_metrics=lambda: None, metrics_seen=set(),
                             writing=True)
    spec = SimpleNamespace(label="at:fgsm", name="adversarial_training")
    RunRecorder.add_metrics(holder, spec, 3, [{"defense": "none", "seed": 7, "step": 1,
                                            "metric": "loss", "value": 0.5}])
    assert holder.metric_rows == [{"method": "adversarial_training", "defense": "at:fgsm",
                                   "seed": 3, "step": 1, "metric": "loss", "value": 0.5}]
