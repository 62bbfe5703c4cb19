"""The ladder's missing rungs: mnist_mlp and cifar_cnn, found by name alone."""

import json

import pytest
import tensorflow_datasets as tfds

import experiments
from common.config.options import RunOptions
from common.errors import UserError
from common.modes import dispatch
from common.runs import report
from tests.fixtures import write_cifar10_batches, write_idx_dataset


def _run(tmp_path, experiment, **overrides):
    values = dict(experiment=experiment, results_dir=str(tmp_path / "results"), epochs=1,
                  batch_size=16, verbose=0)
    values.update(overrides)
    return dispatch.run(RunOptions(**values))


def test_the_new_experiments_are_found_by_their_folder_names():
    assert {"mnist_mlp", "cifar_cnn"} <= set(experiments.names())


@pytest.mark.parametrize("experiment, dataset", [("mnist_mlp", "mnist"),
                                                 ("cifar_cnn", "cifar10")])
@pytest.mark.parametrize("strategy, replicas", [("default", 1), ("mirrored", 2)])
def test_a_few_steps_on_mock_data(tmp_path, experiment, dataset, strategy, replicas):
    (tmp_path / "tfds").mkdir()
    with tfds.testing.mock_data(num_examples=64):
        metrics = _run(tmp_path, experiment, dataset=dataset, strategy=strategy,
                       data_dir=str(tmp_path / "tfds"), run_name="m")
    assert metrics["num_replicas"] == replicas and metrics["status"] == "completed"
    assert metrics["num_test_examples"] == 64 and len(metrics["history"]) == 1


@pytest.mark.slow
def test_both_on_original_files_learn_above_chance(tmp_path):
    idx = write_idx_dataset(tmp_path / "idx", num_train=800, num_test=200)
    cifar = write_cifar10_batches(tmp_path / "cifar", records_per_batch=40).parent
    mlp = _run(tmp_path, "mnist_mlp", data_dir=str(idx), epochs=4, batch_size=32)
    cnn_on_grey = _run(tmp_path, "cifar_cnn", data_dir=str(idx), dataset="mnist", epochs=4,
                       batch_size=32)
    cnn = _run(tmp_path, "cifar_cnn", data_dir=str(cifar), strategy="mirrored")
    assert mlp["test_accuracy"] > 0.5 and cnn_on_grey["test_accuracy"] > 0.5  # chance 0.1
    assert mlp["num_parameters"] == 28 * 28 * 128 + 128 + 128 * 10 + 10
    assert cnn["num_parameters"] == 122_570  # the tutorial's model on 32x32x3, 10 classes
    assert cnn["num_test_examples"] == 40


def test_the_cnn_refuses_images_too_small_for_its_convolutions():
    from common.config import hparams
    module = experiments.get("cifar_cnn")
    with pytest.raises(UserError, match="at least 18x18 pixels, got 16x16"):
        module.build_model(hparams.defaults(module.get_config()), (16, 16, 1), 10)


def test_sweeps_and_the_report_find_them(tmp_path):
    idx = write_idx_dataset(tmp_path / "idx", num_train=200, num_test=40)
    best = _run(tmp_path, "mnist_mlp", mode="tune", tuner="random", max_trials=1,
                max_epochs=1, data_dir=str(idx), sweep_name="s")
    assert best["trials_completed"] == 1
    _run(tmp_path, "cifar_cnn", data_dir=str(idx), dataset="mnist", run_name="c")
    text, _ = report.build_report(tmp_path / "results")
    assert "== mnist_mlp (1 runs)" in text and "== cifar_cnn (1 runs)" in text
    comparison = text.split("== cifar_cnn")[0]
    assert "mnist_mlp" in comparison and "cifar_cnn" in comparison
    saved = json.loads((tmp_path / "results/cifar_cnn/c/metrics.json").read_text())
    # The tutorial's CNN on 28x28 grey images: conv 320 + 18,496 + 36,928,
    # dense 36,928 (3x3x64 in), logits 650.
    assert saved["num_parameters"] == 93_322
