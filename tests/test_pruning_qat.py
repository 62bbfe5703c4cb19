"""pruning_qat: every stage measured, sparsity kept, TFLite files that run."""

import json

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
import tf_keras

from common.config.options import RunOptions
from common.deploy import tflite as tflite_lib
from common.errors import UserError
from common.modes import dispatch
from experiments.pruning_qat import model as compression
from tests.fixtures import write_idx_dataset

MEASURED = ["baseline", "pruned", "pqat", "float_tflite", "int8_tflite"]

FAST = ("baseline_epochs=1", "pruning_epochs=1", "qat_epochs=1", "pruning_frequency=2",
        "latency_invocations=20", "latency_rounds=2")


def _options(tmp_path, hparams=FAST, **overrides):
    values = dict(experiment="pruning_qat", results_dir=str(tmp_path / "results"),
                  batch_size=16, verbose=0, hparams=hparams)
    values.update(overrides)
    return RunOptions(**values)


@pytest.fixture(scope="module")
def idx_dir(tmp_path_factory):
    return write_idx_dataset(tmp_path_factory.mktemp("idx"), num_train=480, num_test=120)


@pytest.mark.parametrize("strategy, replicas", [("default", 1), ("mirrored", 2)])
@pytest.mark.slow
def test_whole_pipeline_on_mock_data(tmp_path, strategy, replicas):
    (tmp_path / "tfds").mkdir()
    with tfds.testing.mock_data(num_examples=64):
        metrics = dispatch.run(_options(tmp_path, strategy=strategy, run_name="r",
                                        data_dir=str(tmp_path / "tfds")))
    assert metrics["num_replicas"] == replicas and metrics["status"] == "completed"
    rows = {row["name"]: row for row in metrics["models_measured"]}
    assert list(rows) == MEASURED
    assert [s["name"] for s in metrics["stages"]] == ["baseline", "pruned", "pqat"]
    assert all(s["strategy"] == metrics["strategy"] for s in metrics["stages"])
    for row in rows.values():
        assert row["num_test_examples"] == 64
        assert 0 < row["gzip_bytes"] < row["bytes"]
    run_dir = tmp_path / "results" / "pruning_qat" / "r"
    # Sizes are the files' own; int8 stores a byte where float stores four.
    for name, file in (("float_tflite", "baseline_float"), ("int8_tflite", "pqat_int8")):
        assert rows[name]["bytes"] == (run_dir / "model" / f"{file}.tflite").stat().st_size
    assert rows["int8_tflite"]["bytes"] < rows["float_tflite"]["bytes"] / 2
    # The headline figures are the int8 TFLite model's.
    assert metrics["test_accuracy"] == rows["int8_tflite"]["test_accuracy"]
    int8, float_ = rows["int8_tflite"], rows["float_tflite"]
    assert int8["latency_ratio_vs_float"] == pytest.approx(
        int8["latency_us"] / float_["latency_us"])
    assert 0.1 < int8["latency_us"] < 1e6 and 0.1 < float_["latency_us"] < 1e6  # µs, measured
    for name in ("baseline_float", "pqat_int8", "pqat_int8_integer_io"):
        classifier = tflite_lib.TFLiteClassifier(run_dir / "model" / f"{name}.tflite")
        logits = classifier.invoke(classifier.prepare(np.zeros((28, 28, 1), np.float32)))
        assert logits.shape == (10,) and np.isfinite(logits).all()
    assert [row["epoch"] for row in metrics["history"]] == [0, 1, 2]
    # Sparsity in TensorBoard, and no second set of epoch figures beside it.
    tags = set()
    for path in (run_dir / "logs" / "pruning" / "metrics").glob("events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            tags.update(value.tag for value in event.summary.value)
    assert any(tag.endswith("/sparsity") for tag in tags)
    assert not (run_dir / "logs" / "pruning" / "train").exists()
    on_disk = json.loads((run_dir / "metrics.json").read_text())
    assert on_disk["models_measured"] == metrics["models_measured"]
    assert not (run_dir / "stages").exists() and not (run_dir / "backup").exists()
    # Every declared model scores again in --mode=eval as it did in training.
    with tfds.testing.mock_data(num_examples=64):
        evaluated = dispatch.run(_options(tmp_path, mode="eval", run_name="r",
                                        data_dir=str(tmp_path / "tfds")))
    declared = {m["name"] for m in metrics["models"]}
    assert declared == set(evaluated["models"]) >= {"model", "baseline", "pruned",
                                                    "float_tflite", "int8_tflite"}
    for name in ("baseline", "pruned", "float_tflite", "int8_tflite"):
        assert evaluated["models"][name]["accuracy"] == pytest.approx(
            rows[name]["test_accuracy"], abs=1e-6), name
    assert evaluated["models"]["model"]["accuracy"] == pytest.approx(
        rows["pqat"]["test_accuracy"], abs=1e-6)


def _zero_masks_keras(model):
    return [layer.get_weights()[0] == 0 for layer in model.layers
            if isinstance(layer, compression.PRUNED_LAYERS)]


def _zero_masks_tflite(path):
    instance = tflite_lib.interpreter(path, xnnpack=False)
    masks = []
    for op in instance._get_ops_details():
        if op["op_name"] in ("CONV_2D", "FULLY_CONNECTED"):
            weights = instance.get_tensor(op["inputs"][1])
            # TFLite stores conv kernels (out, h, w, in) and dense ones (out, in).
            masks.append(np.moveaxis(weights, 0, -1) == 0)
    return masks


@pytest.mark.slow
def test_sparsity_survives_qat_and_int8_export(tmp_path, idx_dir):
    metrics = dispatch.run(_options(
        tmp_path, data_dir=str(idx_dir), run_name="s",
        hparams=FAST + ("final_sparsity=0.5", "qat_learning_rate=0.001")))
    rows = {row["name"]: row for row in metrics["models_measured"]}
    assert rows["baseline"]["sparsity"] < 0.01
    assert rows["pruned"]["sparsity"] >= 0.49
    assert rows["pqat"]["sparsity"] >= 0.49
    assert rows["int8_tflite"]["sparsity"] >= 0.49
    assert rows["float_tflite"]["sparsity"] < 0.01  # the unpruned baseline
    run_dir = tmp_path / "results" / "pruning_qat" / "s"
    pruned = tf_keras.models.load_model(run_dir / "model" / "pruned.keras")
    keras_masks = _zero_masks_keras(pruned)
    assert all(mask.mean() >= 0.49 for mask in keras_masks)
    # The same positions are zero in the int8 model's weights.
    tflite_masks = _zero_masks_tflite(run_dir / "model" / "pqat_int8.tflite")
    assert len(tflite_masks) == len(keras_masks)
    for keras_mask, tflite_mask in zip(keras_masks, tflite_masks):
        assert tflite_mask.shape == keras_mask.shape
        assert tflite_mask[keras_mask].all()
    # The learnable fixture: int8 keeps the float model's accuracy.
    assert rows["int8_tflite"]["test_accuracy"] >= rows["float_tflite"]["test_accuracy"] - 0.02
    assert rows["int8_tflite"]["bytes"] * 3 < rows["float_tflite"]["bytes"]


def test_pqat_training_keeps_pruned_zeros(tmp_path, idx_dir):
    model = compression.build_model({"base_experiment": "mnist_lenet", "dropout": 0.0,
                                     "init_from": ""}, (28, 28, 1), 10)
    for layer in model.layers:
        if isinstance(layer, compression.PRUNED_LAYERS):
            kernel, bias = layer.get_weights()
            kernel[np.abs(kernel) < np.median(np.abs(kernel))] = 0
            layer.set_weights([kernel, bias])
    before = _zero_masks_keras(model)
    pqat = compression.quantize_preserving_sparsity(model)
    pqat.compile(tf_keras.optimizers.Adam(1e-2),
                 tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    images = np.random.default_rng(0).uniform(0, 255, (64, 28, 28, 1)).astype(np.float32)
    pqat.fit(images, np.arange(64) % 10, batch_size=16, epochs=1, verbose=0)
    kernels = [w.numpy() for w in pqat.weights
               if w.name.split("/")[-1].startswith("kernel:")]
    assert len(kernels) == len(before)
    for mask, kernel in zip(before, kernels):
        assert (kernel[mask] == 0).all()
        assert (kernel[~mask] != 0).mean() > 0.99  # the rest did train


@pytest.mark.slow
def test_init_from_a_finished_run_skips_baseline_training(tmp_path, idx_dir):
    lenet = dispatch.run(RunOptions(
        experiment="mnist_lenet", results_dir=str(tmp_path / "results"), epochs=1,
        batch_size=16, verbose=0, data_dir=str(idx_dir), run_name="lenet"))
    metrics = dispatch.run(_options(
        tmp_path, data_dir=str(idx_dir), run_name="from-lenet",
        init_from=str(tmp_path / "results" / "mnist_lenet" / "lenet")))
    stages = {s["name"]: s for s in metrics["stages"]}
    assert stages["baseline"]["last_epoch"] is None  # not trained
    assert (stages["pruned"]["first_epoch"], stages["pqat"]["first_epoch"]) == (0, 1)
    assert [row["epoch"] for row in metrics["history"]] == [0, 1]  # pruning, qat
    baseline = next(r for r in metrics["models_measured"] if r["name"] == "baseline")
    assert baseline["test_accuracy"] == pytest.approx(lenet["test_accuracy"], abs=1e-6)


@pytest.mark.parametrize("overrides, needle", [
    (dict(init_from="/no/such/run"), "/no/such/run is not a run folder"),
    (dict(hparams=FAST + ("final_sparsity=1.5",)), "final_sparsity"),
])
def test_bad_settings_are_one_line(tmp_path, idx_dir, overrides, needle):
    with pytest.raises(UserError, match=needle):
        dispatch.run(_options(tmp_path, data_dir=str(idx_dir), **overrides))


@pytest.mark.slow
def test_killed_in_the_pruning_stage_resumes_there(tmp_path, idx_dir):
    import pathlib
    import subprocess
    import sys
    from tests.fixtures import history_epochs, kill_when
    root = pathlib.Path(__file__).resolve().parent.parent
    args = [sys.executable, str(root / "launch.py"), "--experiment=pruning_qat",
            f"--data_dir={idx_dir}", f"--results_dir={tmp_path}", "--run_name=k",
            "--batch_size=16", "--verbose=2",
            "--hparams=baseline_epochs=1,pruning_epochs=6,qat_epochs=1,pruning_frequency=2,"
            "latency_invocations=5,latency_rounds=1"]
    run_dir = tmp_path / "pruning_qat" / "k"
    process = subprocess.Popen(args, cwd=root, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    kill_when(process, lambda: 1 in history_epochs(run_dir))  # in the pruning stage
    done_before = history_epochs(run_dir)
    assert 1 in done_before and len(done_before) < 7
    assert (run_dir / "stages" / "baseline" / "done.json").exists()
    assert not (run_dir / "stages" / "pruned").exists()

    resumed = subprocess.run(args, cwd=root, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    output = resumed.stdout + resumed.stderr
    assert "Stage baseline already finished" in output  # not trained again
    assert "Stage pruned" in output and "Epoch 1/" not in output
    first_epoch = int(output.split("Epoch ")[1].split("/")[0])
    assert first_epoch == len(done_before) + 1
    assert history_epochs(run_dir) == list(range(8))
    metrics = json.loads((run_dir / "metrics.json").read_text())
    rows = {row["name"]: row for row in metrics["models_measured"]}
    assert rows["pruned"]["sparsity"] == pytest.approx(0.8, abs=0.01)
    assert rows["int8_tflite"]["sparsity"] >= 0.79
