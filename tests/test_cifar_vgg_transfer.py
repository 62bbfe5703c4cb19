"""cifar_vgg_transfer: CIFAR-10 files, VGG16 weights, the two phases, resume."""

import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
import tf_keras

from common.config.options import RunOptions
from common.data import local_files, pipeline, sources
from common.errors import UserError
from common.modes import dispatch
from experiments.cifar_vgg_transfer import model as vgg_model
from tests.fixtures import kill_when, history_epochs, write_cifar10_batches

ROOT = pathlib.Path(__file__).resolve().parent.parent
FAST = ("phase1_epochs=1", "phase2_epochs=1", "head_units=32")


def _options(tmp_path, hparams=FAST, **overrides):
    values = dict(experiment="cifar_vgg_transfer", results_dir=str(tmp_path / "results"),
                  batch_size=16, weights="none", verbose=0, hparams=hparams)
    values.update(overrides)
    return RunOptions(**values)


@pytest.fixture(scope="module")
def cifar_dir(tmp_path_factory):
    return write_cifar10_batches(tmp_path_factory.mktemp("cifar"), records_per_batch=40)


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory):
    """Random VGG16 no-top weights, saved the way Keras ships the real ones."""
    path = tmp_path_factory.mktemp("weights") / vgg_model.WEIGHTS_FILE
    tf_keras.utils.set_random_seed(7)
    tf_keras.applications.VGG16(include_top=False, weights=None,
                                input_shape=(32, 32, 3)).save_weights(str(path))
    return path


def _file_weights(path) -> dict[str, list[np.ndarray]]:
    base = tf_keras.applications.VGG16(include_top=False, weights=None,
                                       input_shape=(32, 32, 3))
    base.load_weights(str(path))
    return {layer.name: layer.get_weights() for layer in base.layers
            if layer.name in vgg_model.VGG16_LAYERS}


def _run_base_weights(run_dir) -> dict[str, list[np.ndarray]]:
    model = tf_keras.models.load_model(run_dir / "model" / "model.keras")
    return {layer.name: layer.get_weights()
            for layer in model.get_layer(vgg_model.BASE_NAME).layers}


def _same(a, b):
    return all(np.array_equal(x, y) for x, y in zip(a, b))


# --- data -------------------------------------------------------------------

def test_cifar10_folder_and_archive_read_the_same(tmp_path):
    folder = write_cifar10_batches(tmp_path / "a", records_per_batch=30, seed=3)
    archive = write_cifar10_batches(tmp_path / "b", records_per_batch=30, seed=3,
                                    archive=True)
    from_folder = sources.load("cifar10", data_dir=str(tmp_path / "a"))
    from_archive = sources.load("cifar10", data_dir=str(tmp_path / "b"))
    assert from_folder.source == str(folder) and from_archive.source == str(archive)
    assert (from_folder.num_train, from_folder.num_validation,
            from_folder.num_test) == (135, 15, 30)
    assert from_folder.image_shape == (32, 32, 3)
    a = np.stack([x.numpy() for x, _ in from_folder.test])
    b = np.stack([x.numpy() for x, _ in from_archive.test])
    np.testing.assert_array_equal(a, b)


def test_cifar10_record_layout_is_decoded_as_planes(tmp_path):
    record = np.zeros(local_files.CIFAR10_RECORD, np.uint8)
    record[0] = 7
    record[1 + 0 * 1024 + 5 * 32 + 9] = 200  # red plane, row 5, column 9
    record[1 + 2 * 1024] = 50                # blue plane, row 0, column 0
    images, labels = local_files.parse_cifar10_records(record.tobytes(), "x")
    assert labels.tolist() == [7]
    assert images.shape == (1, 32, 32, 3)
    assert images[0, 5, 9, 0] == 200 and images[0, 0, 0, 2] == 50


def test_cifar10_bad_record_size_names_the_file(tmp_path):
    folder = write_cifar10_batches(tmp_path, records_per_batch=20)
    path = folder / "data_batch_3.bin"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(UserError, match="data_batch_3.bin: .* not a whole number of 3073"):
        sources.load("cifar10", data_dir=str(tmp_path))


def test_cifar10_label_out_of_range_and_missing_file(tmp_path):
    folder = write_cifar10_batches(tmp_path, records_per_batch=20)
    raw = bytearray((folder / "test_batch.bin").read_bytes())
    raw[0] = 11
    (folder / "test_batch.bin").write_bytes(bytes(raw))
    with pytest.raises(UserError, match="test_batch.bin: label 11 outside 0..9"):
        sources.load("cifar10", data_dir=str(tmp_path))
    (folder / "test_batch.bin").unlink()
    with pytest.raises(UserError, match="lacks test_batch.bin"):
        sources.load("cifar10", data_dir=str(tmp_path))


def test_corrupt_archive_is_named(tmp_path):
    (tmp_path / "cifar-10-binary.tar.gz").write_bytes(b"not a tar file")
    with pytest.raises(UserError, match="corrupt data file .*cifar-10-binary.tar.gz"):
        sources.load("cifar10", data_dir=str(tmp_path))


def test_pad_crop_flip_keeps_shape_and_content():
    image = tf.reshape(tf.range(32 * 32 * 3, dtype=tf.int32) % 251 + 1, (32, 32, 3))
    image = tf.cast(image, tf.uint8)
    outputs = [pipeline.pad_crop_flip(image, 0)[0].numpy() for _ in range(8)]
    assert all(o.shape == (32, 32, 3) and o.dtype == np.uint8 for o in outputs)
    assert any(not np.array_equal(o, image.numpy()) for o in outputs)
    # Every non-padding pixel comes from the original image.
    originals = {tuple(p) for p in image.numpy().reshape(-1, 3)}
    for o in outputs:
        pixels = {tuple(p) for p in o.reshape(-1, 3) if p.any()}
        assert pixels <= originals


# --- model ------------------------------------------------------------------

def test_preprocessing_layer_matches_keras_preprocess_input():
    images = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype(np.float32)
    layer = vgg_model.vgg16_preprocessing()
    np.testing.assert_allclose(
        layer(images).numpy(),
        tf_keras.applications.vgg16.preprocess_input(images.copy()), atol=1e-3)
    assert not layer.trainable_weights


def test_input_size_upsamples_into_the_base():
    config = {**vgg_model_config(), "input_size": 64, "weights": "none"}
    model = vgg_model.build_model(config, (32, 32, 3), 10)
    assert model.get_layer("upsample").output_shape == (None, 64, 64, 3)
    assert model.get_layer(vgg_model.BASE_NAME).output_shape == (None, 2, 2, 512)
    assert model.output_shape == (None, 10)
    assert not model.get_layer(vgg_model.BASE_NAME).trainable


def vgg_model_config():
    from common.config import hparams
    from experiments.cifar_vgg_transfer.config import get_config
    return hparams.defaults(get_config())


def test_imagenet_without_network_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "network_available", lambda *a: False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no cached copy in ~/.keras
    with pytest.raises(UserError) as raised:
        vgg_model.build_model({**vgg_model_config(), "weights": "imagenet"}, (32, 32, 3), 10)
    message = str(raised.value)
    assert "no network" in message and "--weights=PATH" in message
    assert vgg_model.WEIGHTS_FILE in message and "\n" not in message


@pytest.mark.parametrize("overrides, needle", [
    (dict(weights="/no/such/weights.h5"), "/no/such/weights.h5 does not exist"),
    (dict(hparams=FAST + ("unfreeze_from=block9_conv1",)), "'block9_conv1'"),
    (dict(hparams=FAST + ("head_dropout=1.5",)), "'head_dropout'"),
])
def test_bad_settings_fail_before_a_run_folder(tmp_path, cifar_dir, overrides, needle):
    with pytest.raises(UserError, match=needle):
        dispatch.run(_options(tmp_path, data_dir=str(cifar_dir.parent), **overrides))
    assert not list((tmp_path / "results").glob("*/*"))


# --- runs -------------------------------------------------------------------

@pytest.mark.slow
def test_two_phases_on_mock_tfds_under_mirrored(tmp_path):
    (tmp_path / "tfds").mkdir()
    with tfds.testing.mock_data(num_examples=48):
        metrics = dispatch.run(_options(tmp_path, strategy="mirrored",
                                        data_dir=str(tmp_path / "tfds"), run_name="m",
                                        hparams=("phase1_epochs=2", "phase2_epochs=1",
                                                 "head_units=32")))
    assert metrics["num_replicas"] == 2
    assert [row["epoch"] for row in metrics["history"]] == [0, 1, 2]
    phases = {p["name"]: p for p in metrics["stages"]}
    assert (phases["phase1_head"]["first_epoch"], phases["phase1_head"]["last_epoch"]) == (0, 1)
    assert (phases["phase2_finetune"]["first_epoch"],
            phases["phase2_finetune"]["last_epoch"]) == (2, 2)
    assert phases["phase2_finetune"]["learning_rate"] == 1e-5
    assert "val_accuracy" in phases["phase1_head"]["final_validation"]
    assert "val_accuracy" in phases["phase2_finetune"]["final_validation"]
    on_disk = json.loads((tmp_path / "results/cifar_vgg_transfer/m/metrics.json").read_text())
    assert on_disk["num_test_examples"] == 48 and on_disk["status"] == "completed"


@pytest.mark.slow
def test_epochs_flag_runs_that_many_in_every_phase(tmp_path, cifar_dir):
    metrics = dispatch.run(_options(tmp_path, data_dir=str(cifar_dir.parent), epochs=1,
                                  hparams=("phase1_epochs=3", "phase2_epochs=2",
                                           "head_units=32")))
    assert [(p["first_epoch"], p["last_epoch"]) for p in metrics["stages"]] == [(0, 0), (1, 1)]
    assert [row["epoch"] for row in metrics["history"]] == [0, 1]


@pytest.mark.slow
def test_two_phases_on_cifar_files_under_mirrored(tmp_path, cifar_dir):
    metrics = dispatch.run(_options(tmp_path, strategy="mirrored",
                                    data_dir=str(cifar_dir.parent)))
    assert metrics["num_replicas"] == 2 and metrics["data_source"] == str(cifar_dir)
    assert metrics["num_test_examples"] == 40
    assert [p["name"] for p in metrics["stages"]] == ["phase1_head", "phase2_finetune"]


@pytest.mark.slow
def test_weights_by_path_and_what_each_phase_trains(tmp_path, cifar_dir, weights_file):
    expected = _file_weights(weights_file)
    # Phase 1 only: every base weight is the file's, untouched by training.
    dispatch.run(_options(tmp_path, data_dir=str(cifar_dir.parent), run_name="p1",
                          weights=str(weights_file),
                          hparams=("phase1_epochs=1", "phase2_epochs=0", "head_units=32")))
    after_phase1 = _run_base_weights(tmp_path / "results/cifar_vgg_transfer/p1")
    for name, weights in expected.items():
        assert _same(after_phase1[name], weights), name
    # Both phases: block 5 (unfrozen) moved, blocks 1-4 did not.
    dispatch.run(_options(tmp_path, data_dir=str(cifar_dir.parent), run_name="p2",
                          weights=str(weights_file),
                          hparams=FAST + ("phase2_learning_rate=0.001",)))
    after_phase2 = _run_base_weights(tmp_path / "results/cifar_vgg_transfer/p2")
    for name, weights in expected.items():
        if not weights:
            continue
        if name.startswith("block5"):
            assert not _same(after_phase2[name], weights), name
        else:
            assert _same(after_phase2[name], weights), name



@pytest.mark.slow
def test_killed_in_phase2_resumes_in_phase2(tmp_path, cifar_dir, weights_file):
    args = [sys.executable, str(ROOT / "launch.py"), "--experiment=cifar_vgg_transfer",
            f"--data_dir={cifar_dir.parent}", f"--results_dir={tmp_path / 'results'}",
            "--run_name=r", f"--weights={weights_file}", "--batch_size=16", "--verbose=2",
            "--hparams=phase1_epochs=1,phase2_epochs=4,head_units=32,"
            "phase2_learning_rate=0.001"]
    run_dir = tmp_path / "results" / "cifar_vgg_transfer" / "r"
    process = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    kill_when(process, lambda: 1 in history_epochs(run_dir), timeout=300)
    done_before = history_epochs(run_dir)
    assert 1 in done_before and len(done_before) < 5  # killed inside phase 2

    resumed = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    output = resumed.stdout + resumed.stderr
    assert "Stage phase1_head already finished" in output
    assert "Stage phase2_finetune" in output and "Epoch 1/" not in output
    first_epoch = int(output.split("Epoch ")[1].split("/")[0])
    assert first_epoch == len(done_before) + 1
    assert history_epochs(run_dir) == [0, 1, 2, 3, 4]
    # The resumed phase 2 trained block 5 only: the base was unfrozen there.
    expected = _file_weights(weights_file)
    final = _run_base_weights(run_dir)
    for name, weights in expected.items():
        if weights:
            assert _same(final[name], weights) != name.startswith("block5"), name
