import dataclasses
import gzip
import pathlib

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from common.data import memory, pipeline, sources
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


def _pixels(images) -> list[bytes]:
    return [image.tobytes() for image in np.asarray(images)]


def test_an_epoch_covers_every_training_example_in_whole_global_batches(tmp_path):
    splits = sources.load("mnist", data_dir=str(write_idx_dataset(tmp_path, 100, 30)))
    for in_memory in (True, False):
        # deterministic: batches come in order (else a parallel batch of the
        # next pass may overtake the last of this one).
        train = pipeline.make_pipeline(splits.train, 32, seed=1, in_memory=in_memory,
                                       deterministic=True)
        batches = [x.numpy() for x, _ in train]
        # 90 examples: ceil(90 / 32) = 3 batches of 32, none partial, none dropped:
        # the last batch is filled from the next pass.
        assert [b.shape for b in batches] == [(32, 28, 28, 1)] * 3
        assert train.element_spec[0].dtype.name == "float32"
        seen = _pixels(np.concatenate(batches)[:90].astype(np.uint8))
        assert sorted(seen) == sorted(_pixels(_arrays(splits.train)[0]))


def _eval_batches(split, batch, workers, index):
    return list(pipeline.eval_stream(split, batch, workers, index))


@pytest.mark.parametrize("examples, batch, workers, by_file", [
    (30, 32, 1, False), (65, 64, 1, False), (99, 99, 1, False), (64, 16, 1, False),
    (100, 16, 2, True),           # by file: 8 shards, 4 each
    (45, 8, 3, False),            # 8 shards over 3 workers: 3, 3, 2 (unequal): by element
    (96, 8, 4, True),
    (30, 4, 9, False)])           # by element: more workers than shards
def test_evaluation_streams_score_every_example_once_on_any_number_of_workers(
        tmp_path, examples, batch, workers, by_file):
    splits = sources.load("mnist", data_dir=str(write_idx_dataset(tmp_path, 100, examples)))
    split = splits.test
    assert split.num_files() == min(8, examples)
    streams = [_eval_batches(split, batch, workers, w) for w in range(workers)]
    # Every worker runs the same whole number of global batches.
    assert len({len(s) for s in streams}) == 1 and len(streams[0]) >= 1
    assert all(x.shape[0] == batch for s in streams for x, _, _ in s)
    real = [x.numpy()[w.numpy() == 1].astype(np.uint8) for s in streams for x, _, w in s]
    weights = sum(float(w.numpy().sum()) for s in streams for _, _, w in s)
    assert weights == examples
    assert sorted(_pixels(np.concatenate(real))) == sorted(_pixels(_arrays(split)[0]))
    assert sum(split.share_size(workers, w) for w in range(workers)) == examples
    assert split.by_file(workers) == by_file


def test_training_pipeline_reshuffles_every_pass(tmp_path):
    splits = sources.load("mnist", data_dir=str(write_idx_dataset(tmp_path, 200, 20)))
    for in_memory in (True, False):
        train = pipeline.train_stream(splits.train, 180, in_memory=in_memory, seed=3)
        first, second = [y.numpy() for _, y in train.take(2)]  # 180 examples: one pass each
        assert not np.array_equal(first, second)
        assert sorted(first) == sorted(second)


def test_deterministic_pipeline_repeats_with_the_seed(tmp_path):
    splits = sources.load("mnist", data_dir=str(write_idx_dataset(tmp_path, 200, 20)))

    def order(in_memory):
        train = pipeline.make_pipeline(splits.train, 60, seed=5, deterministic=True,
                                       in_memory=in_memory)
        return np.concatenate([y.numpy() for _, y in train])

    for in_memory in (True, False):
        np.testing.assert_array_equal(order(in_memory), order(in_memory))


def test_split_sizes_are_checked_before_any_work(tmp_path):
    splits = sources.load("mnist", data_dir=str(write_idx_dataset(tmp_path, 100, 30)))
    with pytest.raises(UserError, match="training split has 90 examples, fewer than one "
                                        "global batch of 128"):
        pipeline.pipelines(splits, 128)
    empty = dataclasses.replace(splits, num_test=0)
    with pytest.raises(UserError, match="test split .* is empty"):
        pipeline.pipelines(empty, 16)


def test_two_workers_each_read_only_their_shards(tmp_path):
    """Worker 0's streams read to their end with worker 1's shards gone: it
    reads its own files and no other, about half of the bytes."""
    folder = write_idx_dataset(tmp_path, num_train=400, num_test=100)
    splits = sources.load("mnist", data_dir=str(folder))
    total = {name: getattr(splits, name).share_bytes(1, 0) for name in ("train", "test")}
    mine = {name: getattr(splits, name).share_bytes(2, 0) for name in ("train", "test")}
    for name in ("train", "test"):
        assert 0.45 < mine[name] / total[name] < 0.55
    for name in ("train", "validation", "test"):
        split = getattr(splits, name)
        assert split.by_file(2)
        for shard in split.split.shards[1::2]:  # worker 1's
            pathlib.Path(shard.path).rename(shard.path + ".away")
    for name in ("train", "validation", "test"):
        split = getattr(splits, name)
        read = sum(len(r.numpy()) + 16 for r in split.records(2, 0))  # TFRecord framing
        assert read == split.share_bytes(2, 0)
        assert sum(1 for _ in split.examples(2, 0)) == split.share_size(2, 0)
        with pytest.raises(tf.errors.NotFoundError):  # worker 1's files are gone
            list(split.records(2, 1))
    batches = pipeline.eval_stream(splits.test, 16, 2, 0)
    assert sum(float(w.numpy().sum()) for _, _, w in batches) == splits.test.share_size(2, 0)


class TinyDigits(tfds.core.GeneratorBasedBuilder):
    """A real TFDS dataset, prepared offline into 4 TFRecord files a split."""
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(8, 8, 1)),
            "label": tfds.features.ClassLabel(num_classes=3)}),
            supervised_keys=("image", "label"))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(0, 300),
                "test": self._generate_examples(1, 60)}

    def _generate_examples(self, seed, count):
        rng = np.random.default_rng(seed)
        for i in range(count):
            yield i, {"image": rng.integers(0, 255, (8, 8, 1), np.uint8), "label": i % 3}


def test_a_prepared_tfds_dataset_streams_and_workers_read_their_files(tmp_path):
    TinyDigits(data_dir=str(tmp_path)).download_and_prepare(
        download_config=tfds.download.DownloadConfig(num_shards=4))
    splits = sources.load("tiny_digits", data_dir=str(tmp_path))
    assert splits.source == "tfds"
    assert (splits.num_train, splits.num_validation, splits.num_test) == (270, 30, 60)
    assert splits.train.num_files() == 4 and splits.train.by_file(2)
    assert splits.train.share_size(2, 0) + splits.train.share_size(2, 1) == 270
    for streamed in (False, True):
        budget = memory.Budget(0 if streamed else 10**9, "test")
        pipes = pipeline.pipelines(splits, 30, budget=budget)
        assert all(pipes.in_memory.values()) != streamed
        x, y = next(iter(pipes.train))
        assert x.shape == (30, 8, 8, 1) and y.dtype == tf.int64
    # Exact evaluation over two workers reading separate files.
    images = []
    for worker in (0, 1):
        for x, _, w in pipeline.eval_stream(splits.test, 8, 2, worker):
            images += _pixels(x.numpy()[w.numpy() == 1].astype(np.uint8))
    assert sorted(images) == sorted(_pixels(_arrays(splits.test)[0]))


def test_offline_the_message_names_the_installed_datasets(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "network_available", lambda *a: False)
    installed = tmp_path / "datasets"
    write_idx_dataset(installed / "fashion-mnist", num_train=20, num_test=10)
    monkeypatch.setattr(sources, "SYSTEM_DATASETS_DIR", installed)
    (tmp_path / "tfds").mkdir()
    with pytest.raises(UserError) as raised:
        sources.load("mnist", data_dir=str(tmp_path / "tfds"))
    assert str(raised.value).endswith(
        f"; fashion_mnist is installed under {installed}/ and works offline: "
        "--dataset=fashion_mnist")
