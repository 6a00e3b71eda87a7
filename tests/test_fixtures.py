"""The shared test fixtures themselves (tests/conftest.py): the synthetic dataset, and the
in-process CLI printing what a real process prints."""

import pytest


def test_the_synthetic_dataset_is_registered_and_deterministic(synthetic):
    from robench.data import DATASETS

    from .conftest import SYNTHETIC, synthetic_dataset

    assert SYNTHETIC in DATASETS and synthetic.num_classes == 10
    assert synthetic.train.images.shape == (300, 1, 28, 28)
    assert 0 <= synthetic.test.images.min() and synthetic.test.images.max() <= 1
    assert synthetic.fingerprint == synthetic_dataset().fingerprint


@pytest.mark.slow
@pytest.mark.parametrize("args", [
    ["run", "missing.yaml"], ["run", "suites/smoke.yaml", "--device", "tpu"], ["run"],
    ["bogus"], ["run", "suites/smoke.yaml", "--epochs", "-1"], [], ["--version"],
])
def test_in_process_cli_prints_what_a_real_process_prints(args, robench_cli,
                                                          robench_subprocess):
    inside, outside = robench_cli(*args), robench_subprocess(*args)
    assert (inside.returncode, inside.stdout, inside.stderr) == \
        (outside.returncode, outside.stdout, outside.stderr)
