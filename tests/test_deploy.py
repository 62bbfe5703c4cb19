"""Deployment: export/ at the end of training and by --mode=export, parity of
the Keras model, the SavedModel signature and the float TFLite model,
--mode=predict on image files, and the serving benchmark at tiny sizes.

mnist_lenet trains on a slice of the real Fashion-MNIST (6,000 training and
2,000 test images, rewritten as IDX files) where Debian's
dataset-fashion-mnist is installed, so that parity is checked on real test
images and the predicted files are real Fashion-MNIST images with known
labels; elsewhere (CI) on synthetic IDX fixture files, whose test images are
used instead.
"""

import dataclasses
import gzip
import json
import pathlib
import shutil
import os
import subprocess
import sys
from typing import Optional

import numpy as np
import pytest
import tensorflow as tf

import experiments

from common.config.options import RunOptions
from common.data import images as image_io, local_files, sources
from common.deploy import serving, tflite as tflite_lib
from common.errors import UserError
from common.modes import dispatch
from common.runs import saved
from tests.fixtures import (IMAGES_MAGIC, LABELS_MAGIC, idx_bytes, split_arrays,
                            write_cifar10_batches,
                            write_idx_dataset)

ROOT = pathlib.Path(__file__).resolve().parent.parent
FASHION_MNIST = sources.SYSTEM_DATASETS_DIR / "fashion-mnist"
BATCH = 256  # for scoring test splits


@dataclasses.dataclass
class Run:
    experiment: str
    path: pathlib.Path
    metrics: dict
    dataset: str
    data_dir: Optional[str]
    idx_dir: Optional[pathlib.Path] = None  # where its IDX test files are


def train(results_dir: pathlib.Path, experiment: str, run_name: str, dataset: str,
          data_dir: Optional[str], **overrides) -> Run:
    metrics = dispatch.run(RunOptions(experiment=experiment, dataset=dataset, data_dir=data_dir,
                                    results_dir=str(results_dir), run_name=run_name,
                                    verbose=0, **overrides))
    return Run(experiment, results_dir / experiment / run_name, metrics, dataset, data_dir)


@pytest.fixture(scope="module")
def results_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("results")


@pytest.fixture(scope="module")
def idx_dir(tmp_path_factory):
    return write_idx_dataset(tmp_path_factory.mktemp("idx"), num_train=600, num_test=200)


def write_fashion_mnist_slice(folder: pathlib.Path, num_train: int,
                              num_test: int) -> pathlib.Path:
    """The first examples of the real Fashion-MNIST as the four IDX files."""
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, count in (("train", num_train), ("t10k", num_test)):
        for kind, magic in (("images-idx3", IMAGES_MAGIC), ("labels-idx1", LABELS_MAGIC)):
            name = f"{prefix}-{kind}-ubyte.gz"
            array = local_files.read_idx(FASHION_MNIST / name, magic)[:count]
            with gzip.open(folder / name, "wb") as f:
                f.write(idx_bytes(array, magic))
    return folder


@pytest.fixture(scope="module")
def lenet_run(results_dir, idx_dir, tmp_path_factory):
    """mnist_lenet under MirroredStrategy (2 replicas), two epochs: on a
    slice of the real Fashion-MNIST where installed, else on the fixture."""
    if (FASHION_MNIST / "t10k-images-idx3-ubyte.gz").is_file():
        folder = write_fashion_mnist_slice(tmp_path_factory.mktemp("fashion"), 6000, 2000)
        run = train(results_dir, "mnist_lenet", "lenet", "fashion_mnist", str(folder),
                    strategy="mirrored", epochs=2)
    else:
        folder = idx_dir
        run = train(results_dir, "mnist_lenet", "lenet", "mnist", str(folder),
                    strategy="mirrored", epochs=2, batch_size=32)
    run.idx_dir = folder
    return run


@pytest.fixture(scope="module")
def cifar_run(results_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("cifar")
    write_cifar10_batches(folder, records_per_batch=40)
    return train(results_dir, "cifar_vgg_transfer", "vgg", "cifar10", str(folder),
                 weights="none", batch_size=16,
                 hparams=("phase1_epochs=1", "phase2_epochs=1", "head_units=32"))


@pytest.fixture(scope="module")
def pqat_run(results_dir, idx_dir):
    return train(results_dir, "pruning_qat", "pqat", "mnist", str(idx_dir), batch_size=32,
                 hparams=("baseline_epochs=1", "pruning_epochs=1", "qat_epochs=1",
                          "pruning_frequency=2", "latency_invocations=10", "latency_rounds=1"))


def strict_json(path: pathlib.Path):
    def reject(constant):
        pytest.fail(f"{path} holds {constant}: not strict JSON")
    return json.loads(path.read_text(), parse_constant=reject)


def size(path: pathlib.Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


def check_export_files(run: Run) -> None:
    """export/ is complete, metrics.json declares exactly it (strict JSON,
    true sizes) and agrees with config.json on classes and image shape."""
    metrics = strict_json(run.path / "metrics.json")
    config = strict_json(run.path / "config.json")
    exported = {item["path"]: item for item in metrics["exported"]}
    assert set(exported) == {"export/saved_model/1", "export/model_float.tflite",
                             "export/labels.txt"}
    for path, item in exported.items():
        assert item["bytes"] == size(run.path / path) > 0
    assert [exported[p]["format"] for p in sorted(exported)] == ["labels", "tflite",
                                                                 "saved_model"]
    names = [entry["name"] for entry in metrics["models"]]
    assert len(names) == len(set(names)) and names[0] == "model"
    declared = {e["name"]: e for e in metrics["models"]}
    assert declared["export_saved_model"]["format"] == "saved_model"
    assert declared["export_saved_model"]["path"] == "export/saved_model/1"
    assert declared["export_float_tflite"]["format"] == "tflite"
    assert "export_error" not in metrics
    # TensorFlow Serving's layout: <base path>/<version>/saved_model.pb.
    assert (run.path / "export/saved_model/1/saved_model.pb").is_file()
    assert (run.path / "export/saved_model/1/variables").is_dir()
    labels = (run.path / "export/labels.txt").read_text().splitlines()
    assert labels == config["class_names"]
    assert labels == list(local_files.CLASS_NAMES[run.dataset])
    signature = tf.saved_model.load(str(run.path / serving.SAVED_MODEL_PATH)) \
        .signatures["serving_default"]
    (spec,) = signature.structured_input_signature[1].values()
    assert spec.dtype == tf.uint8 and spec.shape.as_list() == [None, *config["image_shape"]]
    outputs = signature.structured_outputs
    assert outputs["probabilities"].dtype == tf.float32
    assert outputs["probabilities"].shape.as_list() == [None, len(labels)]
    assert outputs["classes"].dtype == tf.int64 and outputs["classes"].shape.as_list() == [None]
    assert not list(run.path.glob(".export*")), "staging folder left behind"


def _load_scope(run: Run):
    return experiments.hook(experiments.get(run.experiment), "load_scope")


def predictions(run: Run, images: np.ndarray) -> dict[str, np.ndarray]:
    """Predicted classes [N] of the Keras model, the SavedModel signature
    and the float TFLite model, on uint8 images [N, H, W, C]."""
    model = saved.load_keras_model(run.path, compile=False, scope=_load_scope(run))
    keras = np.concatenate([np.argmax(model.predict_on_batch(
        images[i:i + BATCH].astype(np.float32)), -1) for i in range(0, len(images), BATCH)])
    serve = tf.saved_model.load(str(run.path / serving.SAVED_MODEL_PATH)) \
        .signatures["serving_default"]
    served = [serve(tf.constant(images[i:i + BATCH])) for i in range(0, len(images), BATCH)]
    probabilities = np.concatenate([out["probabilities"].numpy() for out in served])
    classes = np.concatenate([out["classes"].numpy() for out in served])
    np.testing.assert_allclose(probabilities.sum(-1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(classes, probabilities.argmax(-1))
    tflite = tflite_lib.TFLiteClassifier(run.path / serving.TFLITE_PATH)
    lite = np.array([np.argmax(tflite.invoke(tflite.prepare(image.astype(np.float32))))
                     for image in images])
    return {"keras": keras, "saved_model": classes, "tflite_float": lite}


def check_parity(run: Run, recorded_accuracy: float) -> dict[str, float]:
    """On the whole test split: each form predicts the Keras model's class
    for >= 99.9% of examples and its accuracy is within 0.1 point of the
    recorded one. Returns the accuracies."""
    splits = sources.load(run.dataset, data_dir=run.data_dir, validation_fraction=0.1)
    images, labels = split_arrays(splits.test)
    classes = predictions(run, images)
    accuracies = {}
    for name, predicted in classes.items():
        agreement = float(np.mean(predicted == classes["keras"]))
        assert agreement >= 0.999, f"{name} agrees with Keras on {agreement:.4f}"
        accuracies[name] = float(np.mean(predicted == labels))
        assert abs(accuracies[name] - recorded_accuracy) <= 0.001, (name, accuracies)
    return accuracies


# ---------------------------------------------------------------------------
# Export and parity.

@pytest.mark.slow
def test_lenet_run_exports_and_the_three_forms_agree(lenet_run):
    check_export_files(lenet_run)
    accuracies = check_parity(lenet_run, lenet_run.metrics["test_accuracy"])
    if lenet_run.dataset == "fashion_mnist":  # a real model, not a constant
        assert accuracies["keras"] > 0.7
    # --mode=eval scores the exported forms too, from metrics.json's list.
    payload = dispatch.run(RunOptions(experiment="mnist_lenet", mode="eval", run_name="lenet",
                                    results_dir=str(lenet_run.path.parent.parent),
                                    dataset=lenet_run.dataset, data_dir=lenet_run.data_dir))
    scores = payload["models"]
    assert scores["export_saved_model"]["accuracy"] == pytest.approx(
        scores["model"]["accuracy"], abs=0.001)
    assert scores["export_float_tflite"]["accuracy"] == pytest.approx(
        scores["model"]["accuracy"], abs=0.001)


@pytest.mark.slow
def test_cifar_vgg_transfer_run_exports_and_the_three_forms_agree(cifar_run):
    check_export_files(cifar_run)
    check_parity(cifar_run, cifar_run.metrics["test_accuracy"])


@pytest.mark.slow
def test_pruning_qat_exports_its_qat_model_from_hdf5(pqat_run):
    check_export_files(pqat_run)
    declared = {e["name"]: e for e in pqat_run.metrics["models"]}
    # The final model is the QAT model, HDF5 within TFMOT's quantize scope.
    assert declared["model"]["format"] == "h5" and declared["model"]["load_scope"]
    for name in ("int8_tflite", "float_tflite"):  # its own TFLite files stay
        assert (pqat_run.path / declared[name]["path"]).is_file()
    # metrics.json's headline is the int8 file's; the QAT Keras model's own
    # accuracy is its "pqat" row.
    measured = {row["name"]: row for row in pqat_run.metrics["models_measured"]}
    check_parity(pqat_run, measured["pqat"]["test_accuracy"])


def test_export_mode_adds_export_to_a_run_made_before(lenet_run, results_dir):
    older = results_dir / "mnist_lenet" / "older"
    shutil.copytree(lenet_run.path, older)
    shutil.rmtree(older / "export")
    metrics = strict_json(older / "metrics.json")
    metrics["models"] = [e for e in metrics["models"] if not e["path"].startswith("export/")]
    del metrics["exported"]
    (older / "metrics.json").write_text(json.dumps(metrics))
    config_before = (older / "config.json").read_bytes()
    options = RunOptions(experiment="mnist_lenet", mode="export", run_name="older",
                         results_dir=str(results_dir))
    for _ in range(2):  # exporting again replaces export/ and its entries
        updated = dispatch.run(options)
        run = dataclasses.replace(lenet_run, path=older)
        check_export_files(run)
        on_disk = strict_json(older / "metrics.json")
        assert on_disk == json.loads(json.dumps(updated))
        assert on_disk["test_accuracy"] == metrics["test_accuracy"]
        assert [e["name"] for e in on_disk["models"]] == [
            "model", "export_saved_model", "export_float_tflite"]
    assert (older / "config.json").read_bytes() == config_before
    classes = predictions(run, np.zeros((4, 28, 28, 1), np.uint8))
    assert len({tuple(v) for v in classes.values()}) == 1


def test_export_mode_on_a_missing_run_is_a_user_error(results_dir):
    with pytest.raises(UserError, match="no run .*nosuch"):
        dispatch.run(RunOptions(experiment="mnist_lenet", mode="export", run_name="nosuch",
                              results_dir=str(results_dir)))


def test_a_mixed_precision_model_exports_with_a_float32_tflite_file(tmp_path):
    from common.training import precision
    from experiments.mnist_lenet.model import build_model
    with precision.precision({"mixed_precision": "mixed_bfloat16"}):
        model = build_model({"dropout": 0.0}, (28, 28, 1), 10)
        outcome = serving.export_model(tmp_path, model, [str(i) for i in range(10)], (28, 28, 1))
    assert [item["format"] for item in outcome["exported"]] == ["saved_model", "tflite",
                                                                "labels"]
    copy = precision.as_float32(model)
    assert {layer.dtype_policy.name for layer in copy.layers} == {"float32"}
    assert "mixed_bfloat16" in {layer.dtype_policy.name for layer in model.layers}
    images = np.random.default_rng(0).integers(0, 256, (4, 28, 28, 1), dtype=np.uint8)
    tflite = tflite_lib.TFLiteClassifier(tmp_path / serving.TFLITE_PATH)
    lite = np.stack([tflite.invoke(tflite.prepare(image.astype(np.float32))) for image in images])
    np.testing.assert_allclose(lite, copy.predict_on_batch(images.astype(np.float32)),
                               atol=1e-4)
    np.testing.assert_allclose(lite, model.predict_on_batch(images.astype(np.float32)),
                               atol=0.05)  # bfloat16 keeps ~3 significant digits


# ---------------------------------------------------------------------------
# --mode=predict.

def test_images(run: Run, count: int) -> tuple[np.ndarray, np.ndarray]:
    """The first `count` test images (uint8 [N, 28, 28]) and labels of the
    run's IDX data: real Fashion-MNIST test images where installed."""
    folder = run.idx_dir
    images = local_files.read_idx(folder / "t10k-images-idx3-ubyte.gz",
                                  local_files.IDX_IMAGES_MAGIC)[:count]
    labels = local_files.read_idx(folder / "t10k-labels-idx1-ubyte.gz",
                                  local_files.IDX_LABELS_MAGIC)[:count]
    return images, labels.astype(np.int64)


test_images.__test__ = False  # a helper, not a test


def keras_probabilities(run: Run, images: np.ndarray) -> np.ndarray:
    model = saved.load_keras_model(run.path, compile=False, scope=_load_scope(run))
    return tf.nn.softmax(model.predict_on_batch(images.astype(np.float32))).numpy()


def predict(run: Run, inputs, **overrides) -> dict:
    return dispatch.run(RunOptions(experiment=run.experiment, mode="predict",
                                 run_name=run.path.name, results_dir=str(run.path.parent.parent),
                                 inputs=str(inputs), **overrides))


def test_predict_png_and_jpeg_files_as_the_keras_model_does(lenet_run, tmp_path, capsys):
    images, labels = test_images(lenet_run, 40)
    folder = tmp_path / "photos"
    folder.mkdir()
    jpeg_pixels = {}
    for i, (image, label) in enumerate(zip(images, labels)):
        if i < 30:
            encoded = tf.io.encode_png(image[..., None]).numpy()
            (folder / f"{i:02d}-{label}.png").write_bytes(encoded)
        else:
            encoded = tf.io.encode_jpeg(image[..., None], quality=95).numpy()
            (folder / f"{i:02d}-{label}.jpg").write_bytes(encoded)
            jpeg_pixels[i] = image_io.decode(encoded)[0]  # as --mode=predict decodes it
    (folder / "README.txt").write_text("not an image extension: ignored in a folder\n")
    output = tmp_path / "out.csv"
    payload = predict(lenet_run, folder, top_k=3, output=str(output), batch_size=5)
    rows = payload["predictions"]
    assert [pathlib.Path(r["file"]).name for r in rows] == sorted(
        p.name for p in folder.iterdir() if p.suffix != ".txt")
    assert payload["skipped"] == 0 and payload["model"].startswith("SavedModel")
    # The Keras model on the same pixels (JPEG: as decoded) says the same.
    pixels = np.stack([jpeg_pixels.get(i, images[i][..., None]) for i in range(40)])
    expected = keras_probabilities(lenet_run, pixels)
    names = strict_json(lenet_run.path / "config.json")["class_names"]
    for i, row in enumerate(rows):
        best = [name for name, _ in row["top"]]
        assert len(best) == 3 and best[0] == names[int(expected[i].argmax())]
        assert row["top"][0][1] == pytest.approx(float(expected[i].max()), abs=1e-4)
        assert [p for _, p in row["top"]] == sorted((p for _, p in row["top"]), reverse=True)
        assert row["note"] == ""
    # Known labels: a trained model gets most of them.
    right = sum(row["top"][0][0] == names[label] for row, label in zip(rows, labels))
    assert right >= 0.6 * len(rows)
    # The CSV holds the same rows; the table was printed.
    lines = output.read_text().splitlines()
    assert lines[0] == ("file,class,probability,class_2,probability_2,class_3,"
                        "probability_3,note")
    assert [line.split(",")[1] for line in lines[1:]] == [r["top"][0][0] for r in rows]
    printed = capsys.readouterr().out
    assert "probability_3" in printed and "40 predicted, 0 skipped" in printed


def test_predict_marks_bad_files_skipped_and_converts_the_others(lenet_run, tmp_path):
    from PIL import Image
    images, _ = test_images(lenet_run, 6)
    folder = tmp_path / "mixed"
    folder.mkdir()
    good = tf.io.encode_png(images[0][..., None]).numpy()
    (folder / "a-good.png").write_bytes(good)
    (folder / "b-corrupt.png").write_bytes(good[:len(good) // 2])
    (folder / "c-text.png").write_text("hello, I am not a picture\n")
    (folder / "d-rgb.png").write_bytes(tf.io.encode_png(np.repeat(images[1][..., None], 3, -1))
                                       .numpy())
    big = np.repeat(np.repeat(images[2], 2, 0), 2, 1)  # 56x56, each pixel 2x2
    (folder / "e-big.png").write_bytes(tf.io.encode_png(big[..., None]).numpy())
    Image.fromarray(images[3]).convert("RGB").save(folder / "f-rgb.bmp")
    Image.fromarray(images[4]).convert("P").save(folder / "g-palette.gif")
    rgba = np.dstack([np.repeat(images[5][..., None], 3, -1), np.full((28, 28), 255, np.uint8)])
    (folder / "h-rgba.png").write_bytes(tf.io.encode_png(rgba).numpy())
    payload = predict(lenet_run, folder)
    rows = {pathlib.Path(r["file"]).name: r for r in payload["predictions"]}
    assert payload["skipped"] == 2 and len(rows) == 8
    for name in ("b-corrupt.png", "c-text.png"):
        assert rows[name]["top"] == [] and rows[name]["note"].startswith("skipped: ")
    assert "RGB to grey" in rows["d-rgb.png"]["note"]
    assert rows["e-big.png"]["note"] == "resized 56x56 to 28x28"
    assert "alpha flattened" in rows["h-rgba.png"]["note"]
    # Converted files predict as their 28x28 grey originals do (R=G=B gives
    # the grey back); the enlarged one as the Keras model does on its resize
    # by common/data/images.py, the conversion image folders get for training too.
    shrunk = image_io.convert(big[..., None], 1, (28, 28))[0]
    originals = np.concatenate([images[:2, ..., None], shrunk[None], images[3:, ..., None]])
    expected = keras_probabilities(lenet_run, originals)
    for name, index in (("a-good.png", 0), ("d-rgb.png", 1), ("e-big.png", 2),
                        ("f-rgb.bmp", 3), ("g-palette.gif", 4), ("h-rgba.png", 5)):
        assert rows[name]["top"][0][1] == pytest.approx(float(expected[index].max()),
                                                        abs=1e-4), name
    # Default output: predictions.csv in the run folder, skipped rows included.
    lines = (lenet_run.path / "predictions.csv").read_text().splitlines()
    assert len(lines) == 9 and sum("skipped: " in line for line in lines) == 2


def test_predict_gives_a_grey_image_to_an_rgb_model(cifar_run, tmp_path):
    grey = np.random.default_rng(0).integers(0, 256, (28, 28, 1), dtype=np.uint8)
    path = tmp_path / "grey.png"
    path.write_bytes(tf.io.encode_png(grey).numpy())
    payload = predict(cifar_run, path, top_k=2)
    (row,) = payload["predictions"]
    assert row["note"] == "grey to RGB; resized 28x28 to 32x32"
    assert row["top"][0][0] in local_files.CLASS_NAMES["cifar10"]


def test_predict_uses_the_keras_model_without_an_export(lenet_run, results_dir, tmp_path):
    bare = results_dir / "mnist_lenet" / "bare"
    shutil.copytree(lenet_run.path, bare)
    shutil.rmtree(bare / "export")
    metrics = strict_json(bare / "metrics.json")
    metrics["models"] = [e for e in metrics["models"] if not e["path"].startswith("export/")]
    (bare / "metrics.json").write_text(json.dumps(metrics))
    images, _ = test_images(lenet_run, 3)
    for i, image in enumerate(images):
        (tmp_path / f"{i}.png").write_bytes(tf.io.encode_png(image[..., None]).numpy())
    payload = predict(dataclasses.replace(lenet_run, path=bare), tmp_path / "*.png",
                      top_k=10)
    assert payload["model"].startswith("Keras model")
    expected = keras_probabilities(lenet_run, images[..., None])
    for row, probabilities in zip(payload["predictions"], expected):
        assert [p for _, p in row["top"]] == pytest.approx(sorted(probabilities, reverse=True),
                                                            abs=1e-5)


def launch(*args):
    return subprocess.run([sys.executable, str(ROOT / "launch.py"), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("run_name, needle", [("nosuch", "no run"),
                                               ("unfinished", "is not finished")])
def test_predict_on_a_missing_or_unfinished_run_is_one_line(lenet_run, results_dir, tmp_path,
                                                            run_name, needle):
    if run_name == "unfinished":  # started: config.json, no metrics.json
        (results_dir / "mnist_lenet" / run_name).mkdir()
        shutil.copy(lenet_run.path / "config.json", results_dir / "mnist_lenet" / run_name)
    image = tmp_path / "shirt.png"
    image.write_bytes(tf.io.encode_png(np.zeros((28, 28, 1), np.uint8)).numpy())
    result = launch("--experiment=mnist_lenet", "--mode=predict", f"--run_name={run_name}",
                    f"--results_dir={results_dir}", f"--inputs={image}")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("launch.py: error:")]
    assert len(errors) == 1, result.stderr
    assert needle in errors[0] and run_name in errors[0]


@pytest.mark.parametrize("inputs, needle", [
    ("texts", "holds no image files"), ("texts/*.jpg", "matches no file"),
    ("nothing-here", "no such file or folder"), ("texts/notes.png", "could be read")])
def test_predict_without_any_image_is_a_user_error(lenet_run, tmp_path, inputs, needle):
    (tmp_path / "texts").mkdir()
    (tmp_path / "texts" / "notes.txt").write_text("no picture here\n")
    if inputs.endswith(".png"):
        (tmp_path / inputs).write_text("a text file named .png\n")
    with pytest.raises(UserError, match=needle) as raised:
        predict(lenet_run, tmp_path / inputs)
    assert "\n" not in str(raised.value)


# ---------------------------------------------------------------------------
# bench/serving.py

@pytest.mark.slow
def test_serving_benchmark_smoke(pqat_run, tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "serving.py"), f"--runs={pqat_run.path}",
         "--experiments=mnist_lenet,pruning_qat", "--rounds=1", "--seconds=0",
         "--large_batch=8", "--fixture_examples=200", f"--results_dir={tmp_path}"],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    figures = strict_json(tmp_path / "bench" / "serving.json")["experiments"]
    assert set(figures) == {"mnist_lenet", "pruning_qat"}
    assert figures["pruning_qat"]["run"] == str(pqat_run.path)
    for name, paths in (("mnist_lenet", {"keras", "saved_model", "tflite_float"}),
                        ("pruning_qat", {"keras", "saved_model", "tflite_float",
                                         "tflite_int8"})):
        row = figures[name]
        for key in ("latency_us_batch_1", "images_per_second_large_batch",
                    "latency_ratio_vs_keras", "throughput_ratio_vs_keras"):
            assert set(row[key]) == paths and all(v > 0 for v in row[key].values())
        assert row["latency_ratio_vs_keras"]["keras"] == 1.0
        samples = row["samples_seconds_per_call"]["batch_1"]
        assert row["latency_ratio_vs_keras"]["tflite_float"] == pytest.approx(
            samples["keras"][0] / samples["tflite_float"][0])  # one round
        assert f"serving: {name}: batch 1: keras" in result.stdout
        assert f"serving: {name}: batch 8: keras" in result.stdout


CALL_WITH_SHAPES = """
import sys
import numpy as np
import tensorflow as tf
serve = tf.saved_model.load(sys.argv[1]).signatures["serving_default"]
for shape in [(28, 28, 1), (1, 14, 14, 1), (1, 28, 28, 3), (3, 28, 28, 1)]:
    try:
        out = serve(images=tf.constant(np.zeros(shape, np.uint8)))
        print(shape, "ok", tuple(out["probabilities"].shape), flush=True)
    except tf.errors.InvalidArgumentError as e:
        print(shape, "refused:", "images must be uint8 [N, 28, 28, 1]" in str(e), flush=True)
"""


def test_the_serving_signature_refuses_an_unbatched_image_instead_of_aborting(tmp_path):
    """tensorflow/serving#2104's kind: an image without its batch axis
    reached oneDNN's convolution and aborted the process (SIGABRT). In a
    fresh process with oneDNN on (the default), it is an error naming the
    expected shape, and the process carries on."""
    import tf_keras
    model = tf_keras.Sequential([tf_keras.layers.Input((28, 28, 1)),
                                 tf_keras.layers.Conv2D(4, 3), tf_keras.layers.Flatten(),
                                 tf_keras.layers.Dense(10)])
    serving.write_saved_model(model, (28, 28, 1), tmp_path / "saved_model")
    env = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
    result = subprocess.run([sys.executable, "-c", CALL_WITH_SHAPES,
                             str(tmp_path / "saved_model")], capture_output=True, text=True,
                            timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.splitlines() == [
        "(28, 28, 1) refused: True", "(1, 14, 14, 1) refused: True",
        "(1, 28, 28, 3) refused: True", "(3, 28, 28, 1) ok (3, 10)"]


def test_predict_writes_a_name_that_is_not_utf8_escaped(lenet_run, tmp_path, capsys):
    images, _ = test_images(lenet_run, 2)
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "ok.png").write_bytes(tf.io.encode_png(images[0][..., None]).numpy())
    latin1 = folder / os.fsdecode(b"r\xe9sum\xe9.png")
    latin1.write_bytes(tf.io.encode_png(images[1][..., None]).numpy())
    output = tmp_path / "out.csv"
    payload = predict(lenet_run, folder, output=str(output))
    assert payload["skipped"] == 0
    assert sorted(pathlib.PurePath(r["file"]).name for r in payload["predictions"]) == [
        "ok.png", "r\\xe9sum\\xe9.png"]
    text = output.read_bytes().decode("utf-8")  # the CSV is UTF-8
    assert "r\\xe9sum\\xe9.png," in text and "ok.png," in text
    assert "2 predicted, 0 skipped" in capsys.readouterr().out
