"""The runner end to end, in-process, on mock TFDS data and IDX fixtures."""

import json

import numpy as np
from PIL import Image
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
import tf_keras

import experiments
from common.config import resolve
from common.config.options import RunOptions
from common.data import local_files
from common.errors import UserError
from common.modes import dispatch
from common.runs import files
from tests.fixtures import write_idx_dataset


def _options(tmp_path, **overrides):
    values = dict(experiment="mnist_lenet", results_dir=str(tmp_path / "results"),
                  epochs=2, batch_size=16, verbose=0)
    values.update(overrides)
    return RunOptions(**values)


def _plugins_in(folder):
    """Plugin names of every summary in the event files under `folder`."""
    names = set()
    for path in folder.glob("events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                names.add(value.metadata.plugin_data.plugin_name)
    return names


def _scalar_tags(folder):
    tags = set()
    for path in folder.glob("events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            tags.update(value.tag for value in event.summary.value)
    return tags


def test_mirrored_run_on_mock_tfds_leaves_a_complete_run_folder(tmp_path):
    (tmp_path / "tfds").mkdir()
    with tfds.testing.mock_data(num_examples=64):
        metrics = dispatch.run(_options(tmp_path, strategy="mirrored",
                                        data_dir=str(tmp_path / "tfds"),
                                        run_name="mock"))
    run_dir = tmp_path / "results" / "mnist_lenet" / "mock"
    assert metrics["num_replicas"] == 2 and metrics["strategy"] == "MirroredStrategy"
    assert metrics["data_source"] == "tfds"
    on_disk = json.loads((run_dir / "metrics.json").read_text())
    assert on_disk["test_accuracy"] == pytest.approx(metrics["test_accuracy"])
    assert on_disk["num_test_examples"] == 64 and on_disk["status"] == "completed"
    assert [row["epoch"] for row in on_disk["history"]] == [0, 1]
    assert len(on_disk["seconds_per_epoch"]) == 2
    # Every step of an epoch is one global batch of 16 (the remainder dropped).
    steps_images = on_disk["num_train_examples"] // 16 * 16
    for row in on_disk["history"]:
        assert row["images_per_second"] == pytest.approx(steps_images / row["train_seconds"])
    config = json.loads((run_dir / "config.json").read_text())
    assert config["hparams"]["batch_size"] == 16 and config["hparams"]["epochs"] == 2
    assert config["versions"]["tf-keras"].startswith("2.")
    assert config["flags"]["strategy"] == "mirrored"
    # TensorBoard: scalars under train/ and validation/, HParams at the root.
    train_tags = _scalar_tags(run_dir / "logs" / "train")
    assert {"epoch_loss", "epoch_accuracy", "epoch_wall_seconds"} <= train_tags
    assert not any(tag.startswith("epoch_epoch_") for tag in train_tags)
    assert {"epoch_loss", "epoch_accuracy"} <= _scalar_tags(run_dir / "logs" / "validation")
    assert {"epoch_loss", "epoch_accuracy"} <= _scalar_tags(run_dir / "logs" / "test")
    assert "hparams" in _plugins_in(run_dir / "logs")
    model = tf_keras.models.load_model(run_dir / "model" / "model.keras")
    assert model.output_shape == (None, 10)
    assert not (run_dir / "backup").exists()  # cleaned up once finished


def test_loss_falls_on_learnable_fixture_data(tmp_path):
    folder = write_idx_dataset(tmp_path / "idx", num_train=800, num_test=200)
    metrics = dispatch.run(_options(tmp_path, epochs=4, batch_size=32,
                                    data_dir=str(folder)))
    losses = [row["loss"] for row in metrics["history"]]
    assert losses[-1] < losses[0] * 0.5
    assert metrics["test_accuracy"] > 0.8  # the patches are easy; chance is 0.1
    assert metrics["num_test_examples"] == 200
    assert metrics["data_source"] == str(folder)


def test_runs_never_overwrite_each_other(tmp_path):
    folder = write_idx_dataset(tmp_path / "idx", num_train=100, num_test=20)
    first = dispatch.run(_options(tmp_path, epochs=1, data_dir=str(folder)))
    second = dispatch.run(_options(tmp_path, epochs=1, data_dir=str(folder)))
    assert first["run"] != second["run"]
    runs = sorted(p.name for p in (tmp_path / "results" / "mnist_lenet").iterdir())
    assert runs == sorted([first["run"], second["run"]])
    with pytest.raises(UserError, match="already finished"):
        dispatch.run(_options(tmp_path, epochs=1, data_dir=str(folder),
                              run_name=first["run"]))


def test_unfinished_run_with_other_hparams_is_not_resumed(tmp_path):
    folder = write_idx_dataset(tmp_path / "idx", num_train=100, num_test=20)
    run_dir = tmp_path / "results" / "mnist_lenet" / "half"
    run_dir.mkdir(parents=True)
    config = resolve.resolve_config(experiments.get("mnist_lenet"),
                                   _options(tmp_path, epochs=3))
    files.write_json_atomic(run_dir / "config.json", {"hparams": config})
    with pytest.raises(UserError, match=r"different hyperparameters \(epochs\)"):
        dispatch.run(_options(tmp_path, epochs=1, data_dir=str(folder), run_name="half"))


def test_eval_mode_scores_the_saved_model(tmp_path):
    folder = write_idx_dataset(tmp_path / "idx", num_train=400, num_test=100)
    trained = dispatch.run(_options(tmp_path, epochs=2, data_dir=str(folder),
                                    run_name="t"))
    evaluated = dispatch.run(_options(tmp_path, mode="eval", data_dir=str(folder),
                                    run_name="t"))
    score = evaluated["models"]["model"]
    assert score["accuracy"] == pytest.approx(trained["test_accuracy"], abs=1e-6)
    assert score["loss"] == pytest.approx(trained["test_loss"], rel=1e-4)
    assert score["examples"] == evaluated["num_test_examples"] == 100
    on_disk = json.loads((tmp_path / "results/mnist_lenet/t/eval.json").read_text())
    assert on_disk["models"]["model"]["accuracy"] == score["accuracy"]
    assert on_disk["data"] == {**on_disk["data"], "same_as_run": True, "differs": ""}


def _class_folders(root, names, per_class=6):
    rng = np.random.default_rng(0)
    for name in names:
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (28, 28), np.uint8)).save(
                root / name / f"{i}.png")
    return root


@pytest.mark.slow
def test_eval_on_other_data_refuses_other_classes_and_never_replaces_eval_json(
        tmp_path, monkeypatch):
    """Scores on data whose labels mean other classes were written over the
    run's eval.json (a 3-class folder against a 10-class run: exit 0), or
    crashed inside TensorFlow (more classes than the run's outputs)."""
    monkeypatch.setenv("DATA_CACHE_DIR", str(tmp_path / "cache"))
    folder = write_idx_dataset(tmp_path / "idx", num_train=200, num_test=50)
    dispatch.run(_options(tmp_path, epochs=1, data_dir=str(folder), run_name="t"))
    run_dir = tmp_path / "results/mnist_lenet/t"
    own = dispatch.run(_options(tmp_path, mode="eval", data_dir=str(folder), run_name="t"))
    eval_json = (run_dir / "eval.json").read_bytes()
    three = _class_folders(tmp_path / "three", ["Bag", "Coat", "Shirt"])
    with pytest.raises(UserError, match=r"run \S+/t was trained on 10 classes and "
                                        r"--dataset=image_folder has 3: evaluate it on data "
                                        r"with the run's classes \('0', '1', '2'"):
        dispatch.run(_options(tmp_path, mode="eval", run_name="t", dataset="image_folder",
                              data_dir=str(three)))
    # Ten classes under other names (class folders sort by name): refused on
    # the first that differs.
    other = _class_folders(tmp_path / "other", [f"c{i}" for i in range(10)])
    with pytest.raises(UserError, match=r"class 0 is '0' in the run, 'c0' in the "
                                        r"data; evaluate it on data with the run's classes"):
        dispatch.run(_options(tmp_path, mode="eval", run_name="t", dataset="image_folder",
                              data_dir=str(other)))
    assert sorted(p.name for p in run_dir.glob("eval*.json")) == ["eval.json"]
    assert eval_json == (run_dir / "eval.json").read_bytes()
    # Other data with the run's classes is scored into a file of its own.
    second = write_idx_dataset(tmp_path / "idx2", num_train=100, num_test=30, seed=5)
    elsewhere = dispatch.run(_options(tmp_path, mode="eval", run_name="t",
                                      data_dir=str(second)))
    assert elsewhere["num_test_examples"] == 30 and own["num_test_examples"] == 50
    assert elsewhere["data"]["same_as_run"] is False
    assert elsewhere["data"]["differs"].startswith(f"read from {str(second.resolve())!r}")
    name = f"eval-{elsewhere['dataset']}-{elsewhere['data']['key']}.json"
    assert json.loads((run_dir / name).read_text()) == elsewhere
    assert eval_json == (run_dir / "eval.json").read_bytes()
    # The run's own folder by a relative path and through a link: the same data.
    (tmp_path / "link").symlink_to(folder)
    monkeypatch.chdir(tmp_path)
    for path in ("idx", "link"):
        again = dispatch.run(_options(tmp_path, mode="eval", run_name="t", data_dir=path))
        assert again["data"]["same_as_run"], again["data"]
        assert again["models"] == own["models"]  # into eval.json, the same scores
    eval_json = (run_dir / "eval.json").read_bytes()
    # A run whose config.json predates its "data": other data is still other.
    config = json.loads((run_dir / "config.json").read_text())
    del config["data"]
    (run_dir / "config.json").write_text(json.dumps(config))
    old = dispatch.run(_options(tmp_path, mode="eval", run_name="t", data_dir=str(second)))
    assert old["data"]["same_as_run"] is False
    assert eval_json == (run_dir / "eval.json").read_bytes()


def test_class_names_match_loosely_as_folder_names_spell_them():
    from common.modes import eval as eval_mode
    names = local_files.CLASS_NAMES["fashion_mnist"]
    eval_mode.check_classes(names, [n.replace("/", "_").upper() for n in names], "r", "d")
    with pytest.raises(UserError, match="class 9 is 'Ankle boot' in the run, 'Boot'"):
        eval_mode.check_classes(names, [*names[:9], "Boot"], "r", "d")


def test_bad_hparam_and_batch_fail_before_any_run_folder(tmp_path):
    with pytest.raises(UserError, match="'dropot'"):
        dispatch.run(_options(tmp_path, hparams=("dropot=0.1",)))
    with pytest.raises(UserError, match="batch size 15 does not divide across 2"):
        dispatch.run(_options(tmp_path, strategy="mirrored", batch_size=15))
    assert not (tmp_path / "results").exists()


def test_lenet5_layers():
    model = experiments.get("mnist_lenet").build_model(
        {"dropout": 0.0}, (28, 28, 1), 10)
    shapes = {layer.name: layer.output_shape[1:] for layer in model.layers}
    assert shapes["conv1"] == (28, 28, 6) and shapes["pool1"] == (14, 14, 6)
    assert shapes["conv2"] == (10, 10, 16) and shapes["pool2"] == (5, 5, 16)
    assert shapes["fc1"] == (120,) and shapes["fc2"] == (84,) and shapes["logits"] == (10,)
    assert model.count_params() == 61_706  # LeNet-5 with a 'same' first conv


def test_unknown_experiment_lists_the_valid_ones():
    with pytest.raises(UserError, match="'mnist_lenett'.*mnist_lenet"):
        experiments.get("mnist_lenett")
