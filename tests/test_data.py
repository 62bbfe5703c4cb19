import dataclasses
import gzip

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from common.data import pipeline, sources
from common.errors import UserError
from tests.fixtures import IMAGES_MAGIC, LABELS_MAGIC, idx_bytes, write_idx_dataset


def _arrays(ds):
    images, labels = zip(*[(x.numpy(), y.numpy()) for x, y in ds])
    return np.stack(images), np.array(labels)


def test_local_idx_files_are_read_with_a_deterministic_validation_split(tmp_path):
    folder = write_idx_dataset(tmp_path, num_train=300, num_test=50)
    splits = sources.load("mnist", data_dir=str(folder), validation_fraction=0.1)
    assert (splits.num_train, splits.num_validation, splits.num_test) == (270, 30, 50)
    assert splits.image_shape == (28, 28, 1) and splits.num_classes == 10
    assert splits.source == str(folder)
    train_x, train_y = _arrays(splits.train)
    val_x, _ = _arrays(splits.validation)
    assert train_x.shape == (270, 28, 28, 1) and train_x.dtype == np.uint8
    assert train_y.dtype == np.int64 and train_y.max() < 10
    # Validation is the end of the train file, the same on every load.
    with gzip.open(folder / "train-images-idx3-ubyte.gz") as f:
        raw = np.frombuffer(f.read(), np.uint8, offset=16).reshape(300, 28, 28, 1)
    np.testing.assert_array_equal(train_x, raw[:270])
    np.testing.assert_array_equal(val_x, raw[270:])
    again = sources.load("mnist", data_dir=str(folder), validation_fraction=0.1)
    np.testing.assert_array_equal(_arrays(again.validation)[0], val_x)


def test_dataset_subfolder_and_uncompressed_files_are_found(tmp_path):
    folder = write_idx_dataset(tmp_path / "fashion_mnist", num_train=100, num_test=20)
    for path in folder.glob("*.gz"):
        with gzip.open(path) as f:
            path.with_suffix("").write_bytes(f.read())
        path.unlink()
    splits = sources.load("fashion_mnist", data_dir=str(tmp_path))
    assert splits.num_test == 20


def test_truncated_file_is_named(tmp_path):
    folder = write_idx_dataset(tmp_path)
    path = folder / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(UserError, match="corrupt data file .*train-images-idx3-ubyte.gz"):
        sources.load("mnist", data_dir=str(folder))


def test_short_payload_is_named(tmp_path):
    folder = write_idx_dataset(tmp_path, num_test=20)
    labels = np.zeros(10, np.uint8)
    header = idx_bytes(labels, LABELS_MAGIC)[:8]  # header says 10 labels
    with gzip.open(folder / "t10k-labels-idx1-ubyte.gz", "wb") as f:
        f.write(header + labels[:7].tobytes())
    with pytest.raises(UserError, match="t10k-labels-idx1-ubyte.gz: header promises"):
        sources.load("mnist", data_dir=str(folder))


def test_wrong_magic_is_named(tmp_path):
    folder = write_idx_dataset(tmp_path)
    with gzip.open(folder / "t10k-labels-idx1-ubyte.gz", "wb") as f:
        f.write(idx_bytes(np.zeros((200, 28, 28), np.uint8), IMAGES_MAGIC))
    with pytest.raises(UserError, match="t10k-labels.*magic number 0x00000803"):
        sources.load("mnist", data_dir=str(folder))


def test_count_mismatch_between_images_and_labels(tmp_path):
    folder = write_idx_dataset(tmp_path, num_test=200)
    with gzip.open(folder / "t10k-labels-idx1-ubyte.gz", "wb") as f:
        f.write(idx_bytes(np.zeros(199, np.uint8), LABELS_MAGIC))
    with pytest.raises(UserError, match="200 images but .* 199 labels"):
        sources.load("mnist", data_dir=str(folder))


def test_label_out_of_range(tmp_path):
    folder = write_idx_dataset(tmp_path, num_test=200)
    with gzip.open(folder / "t10k-labels-idx1-ubyte.gz", "wb") as f:
        f.write(idx_bytes(np.full(200, 12, np.uint8), LABELS_MAGIC))
    with pytest.raises(UserError, match="label 12 outside 0..9"):
        sources.load("mnist", data_dir=str(folder))


def test_missing_file_is_named(tmp_path):
    folder = write_idx_dataset(tmp_path)
    (folder / "t10k-images-idx3-ubyte.gz").unlink()
    with pytest.raises(UserError, match="not t10k-images-idx3-ubyte"):
        sources.load("mnist", data_dir=str(folder))


def test_missing_data_dir(tmp_path):
    with pytest.raises(UserError, match="does-not-exist does not exist"):
        sources.load("mnist", data_dir=str(tmp_path / "does-not-exist"))


def test_system_folder_is_used_without_data_dir(tmp_path, monkeypatch):
    write_idx_dataset(tmp_path / "fashion-mnist", num_train=100, num_test=30)
    monkeypatch.setattr(sources, "SYSTEM_DATASETS_DIR", tmp_path)
    monkeypatch.setattr(sources, "_tfds_splits", _not_prepared)
    splits = sources.load("fashion_mnist")
    assert splits.source == str(tmp_path / "fashion-mnist")
    assert splits.num_test == 30
    assert splits.class_names[0] == "T-shirt/top" and splits.class_names[9] == "Ankle boot"


def _not_prepared(*args, download, **kwargs):
    assert not download, "must not try a download when local files exist"
    raise AssertionError("not prepared")


def test_no_network_fails_at_once_naming_the_local_alternative(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "network_available", lambda *a: False)
    with pytest.raises(UserError) as raised:
        sources.load("mnist", data_dir=str(tmp_path))
    message = str(raised.value)
    assert "no network" in message and "--data_dir" in message
    assert "train-images-idx3-ubyte.gz" in message and "\n" not in message


def test_tfds_source_under_mock_data(tmp_path):
    with tfds.testing.mock_data(num_examples=40):
        splits = sources.load("mnist", data_dir=str(tmp_path))
        assert splits.source == "tfds"
        assert splits.image_shape == (28, 28, 1) and splits.num_classes == 10
        images, labels = _arrays(splits.train)
    assert images.shape[1:] == (28, 28, 1) and labels.max() < 10


def test_pipeline_batches_by_global_batch(tmp_path):
    splits = sources.load("mnist", data_dir=str(write_idx_dataset(tmp_path, 100, 30)))
    train = pipeline.make_pipeline(splits.train, 32, num_examples=splits.num_train, seed=1)
    shapes = [tuple(x.shape) for x, _ in train]
    assert shapes == [(32, 28, 28, 1)] * (90 // 32)  # remainder dropped
    assert train.element_spec[0].dtype.name == "float32"


@pytest.mark.parametrize("examples, batch, workers", [(30, 32, 1), (65, 64, 1), (99, 99, 1),
                                                      (100, 16, 2), (64, 16, 1)])
def test_evaluation_batches_are_whole_and_weigh_every_example_once(examples, batch, workers):
    images = np.arange(examples, dtype=np.uint8).reshape(examples, 1, 1, 1)
    split = tf.data.Dataset.from_tensor_slices((images, np.arange(examples, dtype=np.int64)))
    batches = list(pipeline.eval_dataset(split, examples, batch, workers))
    assert all(x.shape[0] == batch for x, _, _ in batches)
    assert (len(batches) * batch) % (batch * workers) == 0
    weights = np.concatenate([w.numpy() for _, _, w in batches])
    labels = np.concatenate([y.numpy() for _, y, _ in batches])
    assert weights.sum() == examples
    assert sorted(labels[weights == 1].tolist()) == list(range(examples))


def test_training_pipeline_reshuffles_every_epoch(tmp_path):
    splits = sources.load("mnist", data_dir=str(write_idx_dataset(tmp_path, 200, 20)))
    train = pipeline.make_pipeline(splits.train, 180, num_examples=splits.num_train, seed=3)
    first, second = [np.concatenate([y.numpy() for _, y in train]) for _ in range(2)]
    assert not np.array_equal(first, second)
    assert sorted(first) == sorted(second)


def test_deterministic_pipeline_repeats_with_the_seed(tmp_path):
    splits = sources.load("mnist", data_dir=str(write_idx_dataset(tmp_path, 200, 20)))

    def order():
        train = pipeline.make_pipeline(splits.train, 60, num_examples=splits.num_train, seed=5,
                                   deterministic=True)
        return np.concatenate([y.numpy() for _, y in train])

    np.testing.assert_array_equal(order(), order())


def test_split_sizes_are_checked_before_any_work(tmp_path):
    splits = sources.load("mnist", data_dir=str(write_idx_dataset(tmp_path, 100, 30)))
    with pytest.raises(UserError, match="training split has 90 examples, fewer than one "
                                        "global batch of 128"):
        pipeline.pipelines(splits, 128)
    empty = dataclasses.replace(splits, num_test=0)
    with pytest.raises(UserError, match="test split .* is empty"):
        pipeline.pipelines(empty, 16)
