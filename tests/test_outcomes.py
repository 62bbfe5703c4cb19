"""Honest outcomes: a run that did not do what it says is never reported as done."""

import json
import logging
import math
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import tf_keras

from common.config.options import RunOptions
from common.errors import UserError
from common.modes import dispatch
from common.training import callbacks as callback_lib, precision
from experiments.pruning_qat import model as compression
from tests.fixtures import write_idx_dataset

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _strict(path: pathlib.Path):
    """Parses a JSON file refusing NaN and Infinity, as strict parsers do."""
    def refuse(token):
        raise ValueError(f"{path} holds {token}")
    return json.loads(path.read_text(), parse_constant=refuse)


def _launch(*args, timeout=600):
    return subprocess.run([sys.executable, str(ROOT / "launch.py"), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def idx_dir(tmp_path_factory):
    return write_idx_dataset(tmp_path_factory.mktemp("idx"), num_train=600, num_test=99)


def test_diverged_training_is_a_failed_run_with_one_line(tmp_path, idx_dir):
    result = _launch("--experiment=mnist_lenet", f"--data_dir={idx_dir}", "--epochs=3",
                     f"--results_dir={tmp_path}", "--run_name=nan", "--verbose=0",
                     "--hparams=learning_rate=1e6,lr_schedule=constant,steps_per_execution=1")
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.startswith("launch.py")]
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert "training diverged" in lines[0] and "in epoch 1, batch" in lines[0]
    run_dir = tmp_path / "mnist_lenet" / "nan"
    metrics = _strict(run_dir / "metrics.json")
    assert metrics["status"] == "failed" and "diverged" in metrics["failure"]
    assert metrics["test_accuracy"] is None and metrics["test_loss"] is None
    assert not (run_dir / "model").exists()  # no NaN weights kept as "the model"
    for path in run_dir.rglob("*.json"):
        _strict(path)
    # A failed run is not resumed or overwritten by the same command.
    again = _launch("--experiment=mnist_lenet", f"--data_dir={idx_dir}", "--epochs=3",
                    f"--results_dir={tmp_path}", "--run_name=nan", "--verbose=0",
                    "--hparams=learning_rate=1e6,lr_schedule=constant,steps_per_execution=1")
    assert again.returncode == 1 and "already finished" in again.stderr


def test_every_example_is_scored_once_when_the_last_batch_is_smaller_than_the_replicas(
        tmp_path):
    # 650 training images: 585 train and 65 validation; 99 test. At global
    # batch 64 over 2 replicas the last validation batch holds 1 example and
    # the last test batch 35.
    folder = write_idx_dataset(tmp_path / "idx", num_train=650, num_test=99)
    metrics = dispatch.run(RunOptions(
        experiment="mnist_lenet", data_dir=str(folder), results_dir=str(tmp_path / "r"),
        strategy="mirrored", epochs=1, batch_size=64, verbose=0, run_name="odd"))
    assert metrics["num_replicas"] == 2
    assert (metrics["num_validation_examples"], metrics["num_test_examples"]) == (65, 99)
    evaluated = dispatch.run(RunOptions(
        experiment="mnist_lenet", mode="eval", data_dir=str(folder),
        results_dir=str(tmp_path / "r"), strategy="mirrored", batch_size=64, run_name="odd"))
    assert evaluated["models"]["model"]["examples"] == 99
    assert evaluated["models"]["model"]["accuracy"] == pytest.approx(
        metrics["test_accuracy"], abs=1e-6)
    # The same figures as one replica over unpadded data, example by example.
    model = tf_keras.models.load_model(tmp_path / "r/mnist_lenet/odd/model/model.keras")
    from common.data import sources
    images, labels = zip(*[(x.numpy(), y.numpy())
                           for x, y in sources.load("mnist", data_dir=str(folder)).test])
    logits = model.predict(np.stack(images).astype(np.float32), verbose=0)
    assert metrics["test_accuracy"] == pytest.approx(
        float((logits.argmax(1) == np.array(labels)).mean()), abs=1e-6)


@pytest.mark.slow
def test_three_replicas_with_a_one_example_remainder_on_the_command_line(tmp_path, idx_dir):
    result = _launch("--experiment=mnist_lenet", f"--data_dir={idx_dir}", "--epochs=1",
                     "--strategy=mirrored", "--num_cpu_devices=3", "--batch_size=99",
                     f"--results_dir={tmp_path}", "--run_name=three", "--verbose=0")
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = _strict(tmp_path / "mnist_lenet" / "three" / "metrics.json")
    assert metrics["num_replicas"] == 3 and metrics["num_test_examples"] == 99


def _scripted_early_stopping(losses, state_dir, first_epoch, callback=None):
    """Feeds `losses` (val_loss per epoch from first_epoch on) to a
    ResumableEarlyStopping on a one-weight model whose weight is the epoch;
    returns the callback and the epoch it stopped after (or None)."""
    model = tf_keras.Sequential([tf_keras.layers.Dense(1, use_bias=False, input_shape=(1,))])
    early = callback or callback_lib.ResumableEarlyStopping(2, state_dir)
    early.set_model(model)
    early.on_train_begin()
    for epoch in range(first_epoch, len(losses)):
        model.set_weights([np.full((1, 1), float(epoch), np.float32)])
        early.on_epoch_begin(epoch)
        early.on_epoch_end(epoch, {"val_loss": losses[epoch]})
        if model.stop_training:
            early.on_train_end()
            return early, epoch, float(model.get_weights()[0][0, 0])
    early.on_train_end()
    return early, None, float(model.get_weights()[0][0, 0])


def test_early_stopping_resumes_with_its_patience_and_best_weights(tmp_path):
    losses = [1.0, 0.8, 0.9, 0.95, 0.6, 0.5]
    _, stopped, weight = _scripted_early_stopping(losses, tmp_path / "straight", 0)
    assert (stopped, weight) == (3, 1.0)  # two epochs without improvement; best: epoch 1
    # Killed after epoch 2 (the first without improvement), resumed at epoch 3
    # by a new process: the same stop, the same best weights.
    _scripted_early_stopping(losses[:3], tmp_path / "killed", 0)
    early, stopped, weight = _scripted_early_stopping(losses, tmp_path / "killed", 3)
    assert (stopped, weight, early.best_epoch) == (3, 1.0, 1)


def test_a_run_stopped_early_says_so_with_its_real_epochs(tmp_path, idx_dir):
    metrics = dispatch.run(RunOptions(
        experiment="mnist_lenet", data_dir=str(idx_dir), results_dir=str(tmp_path),
        epochs=30, batch_size=16, verbose=0, run_name="es",
        hparams=("early_stopping_patience=1", "learning_rate=0.05", "lr_schedule=constant",
                 "steps_per_execution=1")))
    stage = metrics["stages"][0]
    assert metrics["status"] == "stopped_early" and stage["stopped_early"]
    assert stage["last_epoch"] < stage["planned_last_epoch"] == 29
    assert metrics["epochs"] == stage["last_epoch"] + 1 == len(metrics["history"])
    best = metrics["history"][stage["best_epoch"]]
    assert metrics["final_validation"] == {"val_loss": best["val_loss"],
                                           "val_accuracy": best["val_accuracy"]}
    assert metrics["stopped_early"] == [{"stage": "train", "epoch": stage["last_epoch"] + 1,
                                         "best_epoch": stage["best_epoch"] + 1}]


@pytest.mark.slow
def test_a_short_pruning_stage_still_reaches_its_target_sparsity(tmp_path, idx_dir, caplog):
    # 540 training images at batch 64: 9 steps, far fewer than pruning_frequency=50.
    caplog.set_level(logging.INFO, logger="absl")
    metrics = dispatch.run(RunOptions(
        experiment="pruning_qat", data_dir=str(idx_dir), results_dir=str(tmp_path),
        batch_size=64, verbose=0, run_name="short",
        hparams=("baseline_epochs=1", "pruning_epochs=1", "qat_epochs=0",
                 "latency_invocations=5", "latency_rounds=1")))
    rows = {row["name"]: row for row in metrics["models_measured"]}
    assert rows["pruned"]["sparsity"] == pytest.approx(0.8, abs=0.01)
    assert rows["int8_tflite"]["sparsity"] == pytest.approx(0.8, abs=0.01)
    assert metrics["warnings"] == []
    assert any("pruning every 6 steps instead of pruning_frequency=50" in r.message
               for r in caplog.records)
    # Keras counts the run's epochs ("Epoch 2/2"); the log says the stage's.
    messages = [r.getMessage() for r in caplog.records]
    assert "Stage baseline (1 of 3): epoch 1 of 1" in messages
    assert "Stage pruned (2 of 3): epoch 1 of 1" in messages


def test_an_impossible_pruning_schedule_is_refused_before_any_folder(tmp_path, idx_dir):
    with pytest.raises(UserError, match="pruning_end_step=100 is past the pruning stage's "
                                        "last step \\(8; 9 steps"):
        dispatch.run(RunOptions(
            experiment="pruning_qat", data_dir=str(idx_dir), results_dir=str(tmp_path),
            batch_size=64, verbose=0, hparams=("pruning_epochs=1", "pruning_end_step=100")))
    assert not list(tmp_path.glob("*/*"))


@pytest.mark.slow
def test_compression_of_a_bfloat16_model_runs_in_float32(tmp_path, idx_dir, monkeypatch):
    monkeypatch.setattr(precision, "cpu_has_bfloat16", lambda: True)
    metrics = dispatch.run(RunOptions(
        experiment="pruning_qat", data_dir=str(idx_dir), results_dir=str(tmp_path),
        batch_size=32, verbose=0, run_name="bf16", mixed_precision="mixed_bfloat16",
        hparams=("baseline_epochs=1", "pruning_epochs=1", "qat_epochs=1",
                 "latency_invocations=5", "latency_rounds=1")))
    assert metrics["status"] == "completed"
    rows = {row["name"]: row for row in metrics["models_measured"]}
    assert rows["int8_tflite"]["test_accuracy"] > 0.3  # a working int8 model
    pruned = tf_keras.models.load_model(tmp_path / "pruning_qat/bf16/model/pruned.keras")
    assert {layer.dtype_policy.name for layer in pruned.layers} == {"float32"}
    assert tf_keras.mixed_precision.global_policy().name == "float32"  # restored


def test_flatten_reaches_the_layers_of_a_nested_base():
    inner = tf_keras.Sequential([tf_keras.layers.Conv2D(4, 3, name="inner_conv"),
                                 tf_keras.layers.MaxPooling2D(name="inner_pool")], name="base")
    inputs = tf_keras.Input((8, 8, 1))
    x = tf_keras.layers.Concatenate()([inputs, inputs, inputs])
    x = inner(x, training=False)
    outputs = tf_keras.layers.Dense(3, name="head")(tf_keras.layers.Flatten()(x))
    nested = tf_keras.Model(inputs, outputs)
    flat = compression.flatten(nested)
    names = [layer.name for layer in flat.layers]
    assert "inner_conv" in names and "base" not in names
    images = np.random.default_rng(0).uniform(size=(2, 8, 8, 1)).astype(np.float32)
    np.testing.assert_allclose(flat(images).numpy(), nested(images).numpy(), rtol=1e-6)
    pruned = compression.prune(nested, compression.pruning_schedule(
        {"pruning_begin_step": 0, "pruning_frequency": 1, "pruning_end_step": -1,
         "initial_sparsity": 0.0, "final_sparsity": 0.5}, 10)[0])
    wrapped = [layer.layer.name for layer in pruned.layers if hasattr(layer, "layer")]
    assert sorted(wrapped) == ["head", "inner_conv"]


@pytest.mark.slow
def test_a_vgg16_transfer_run_compresses_end_to_end(tmp_path):
    from tests.fixtures import write_cifar10_batches
    write_cifar10_batches(tmp_path / "cifar", records_per_batch=24)
    common = dict(results_dir=str(tmp_path / "r"), data_dir=str(tmp_path / "cifar"),
                  batch_size=16, verbose=0)
    dispatch.run(RunOptions(experiment="cifar_vgg_transfer", weights="none", run_name="vgg",
                          hparams=("phase1_epochs=1", "phase2_epochs=0", "head_units=16"),
                          **common))
    metrics = dispatch.run(RunOptions(
        experiment="pruning_qat", dataset="cifar10", run_name="vgg-int8",
        init_from=str(tmp_path / "r/cifar_vgg_transfer/vgg"),
        hparams=("pruning_epochs=1", "qat_epochs=1", "final_sparsity=0.5",
                 "latency_invocations=2", "latency_rounds=1"), **common))
    rows = {row["name"]: row for row in metrics["models_measured"]}
    # The whole model is pruned, layer by layer (the VGG16 base holds 14.7M
    # of its weights), and int8 keeps the zeros (rounding adds more).
    pruned = tf_keras.models.load_model(tmp_path / "r/pruning_qat/vgg-int8/model/pruned.keras")
    sparsity = {layer.name: float((layer.get_weights()[0] == 0).mean())
                for layer in pruned.layers if isinstance(layer, compression.PRUNED_LAYERS)
                and layer.name != "vgg16_preprocess"}
    assert len(sparsity) == 13 + 2  # VGG16's convolutions, the head's two dense layers
    assert all(value == pytest.approx(0.5, abs=0.01) for value in sparsity.values()), sparsity
    assert rows["pruned"]["sparsity"] == pytest.approx(0.5, abs=0.01)
    assert rows["int8_tflite"]["sparsity"] >= 0.49
    assert rows["int8_tflite"]["num_test_examples"] == 24
    assert rows["int8_tflite"]["size_ratio_vs_float"] > 3.5
    # The QAT model (HDF5) loads back, so the serving files were written.
    assert {e["format"] for e in metrics["exported"]} >= {"saved_model", "tflite"}
    assert not metrics.get("warnings"), metrics.get("warnings")


def test_strict_json_everywhere(tmp_path):
    from common.runs import files
    files.write_json_atomic(tmp_path / "x.json", {"a": math.nan, "b": [math.inf, 1.0]})
    assert _strict(tmp_path / "x.json") == {"a": None, "b": [None, 1.0]}


@pytest.mark.slow
@pytest.mark.parametrize("budget", ["auto", "0"])  # cached in memory; streamed from disk
def test_deterministic_runs_repeat_exactly(tmp_path, idx_dir, budget):
    figures = []
    for name in ("a", "b"):
        result = _launch("--experiment=mnist_lenet", f"--data_dir={idx_dir}", "--epochs=2",
                         "--batch_size=32", "--deterministic", "--seed=3", "--verbose=0",
                         f"--results_dir={tmp_path}", f"--run_name={name}",
                         f"--data_memory_budget={budget}")
        assert result.returncode == 0, result.stderr[-3000:]
        assert ("streamed from" in result.stderr) == (budget == "0")
        metrics = _strict(tmp_path / "mnist_lenet" / name / "metrics.json")
        figures.append((metrics["test_accuracy"], metrics["test_loss"],
                        [(r["loss"], r["val_loss"]) for r in metrics["history"]],
                        metrics["weights_checksum"]))
    assert figures[0] == figures[1]


def test_latency_of_a_slow_model_takes_about_a_second_a_round(monkeypatch):
    """A VGG16-sized model is timed in fewer calls per round (500 calls of
    tens of milliseconds would take minutes a round); a fast one makes all."""
    import time
    from common.deploy import tflite as tflite_lib
    calls = {"slow": 0, "fast": 0}

    class Fake:
        def __init__(self, path, threads, xnnpack):
            self.name = str(path)

        def prepare(self, image):
            return image

        def invoke(self, prepared):
            calls[self.name] += 1
            time.sleep(0.02 if self.name == "slow" else 0.0)

    monkeypatch.setattr(tflite_lib, "TFLiteClassifier", Fake)
    latency = tflite_lib.latency_us({"slow": "slow", "fast": "fast"}, np.zeros((2, 2, 1)),
                                invocations=100, rounds=3, round_seconds=0.1)
    assert latency["slow"] == pytest.approx(20_000, rel=0.5)
    assert calls["slow"] <= 20 + 3 * 6   # warm-up, then about 0.1 s a round
    assert calls["fast"] >= 20 + 3 * 100  # every invocation asked for


def test_a_qat_model_with_an_array_constant_initializer_reloads_from_hdf5(tmp_path):
    """VGG16 transfer runs made before its preprocessing kernel was a list
    hold a NumPy Constant initializer, which HDF5 cannot read back."""
    inputs = tf_keras.Input((4, 4, 3))
    x = tf_keras.layers.Conv2D(
        3, 1, kernel_initializer=tf_keras.initializers.Constant(np.eye(3).reshape(1, 1, 3, 3)),
        name="fixed")(inputs)
    outputs = tf_keras.layers.Dense(2)(tf_keras.layers.Flatten()(x))
    quantized = compression.quantize_preserving_sparsity(tf_keras.Model(inputs, outputs))
    quantized.save(tmp_path / "qat.h5")
    with compression.quantize_scope():
        loaded = tf_keras.models.load_model(tmp_path / "qat.h5")
    images = np.random.default_rng(0).random((2, 4, 4, 3), np.float32)
    np.testing.assert_allclose(loaded.predict(images, verbose=0),
                               quantized.predict(images, verbose=0), atol=1e-5)
