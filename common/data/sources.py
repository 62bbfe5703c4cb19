"""Input data: TensorFlow Datasets or the datasets' original files, as tf.data.

`load()` returns the train / validation / test splits as unbatched datasets of
(image uint8 [H, W, C], label int64); `make_pipeline()` turns a split into the
batched, prefetched stream a model trains on.

Where data comes from, in order:
  0. `--dataset=image_folder`: the folder `--data_dir` of class folders of
     images, cleaned, checked and cached by common/image_folder.py.
  1. `--data_dir` holding the original distribution files (MNIST and
     Fashion-MNIST IDX files, CIFAR-10's binary version): read and validated
     by common/local_files.py.
  2. Without `--data_dir`: the folder Debian's dataset packages install to,
     /usr/share/datasets/<name>/ (`apt install dataset-fashion-mnist`).
  3. A prepared TFDS copy (in `--data_dir`, or TFDS' default folder).
  4. A TFDS download; with no network, one line saying so and naming the
     local-files alternative (TFDS would otherwise retry for minutes).

The validation split is carved deterministically from the end of train, the
same way for every source, so it never overlaps the training examples.
"""

import dataclasses
import pathlib
import socket
from typing import Callable, Optional

import numpy as np
import tensorflow as tf

from common import local_files
from common.errors import UserError

AUTOTUNE = tf.data.AUTOTUNE

# Where Debian's dataset-* packages put the original files.
SYSTEM_DATASETS_DIR = pathlib.Path("/usr/share/datasets")
# The host TFDS downloads MNIST-family files from; checked before a download.
DOWNLOAD_HOST = "storage.googleapis.com"


@dataclasses.dataclass
class Splits:
    """The three splits of a dataset and what a model needs to know of it."""
    train: tf.data.Dataset
    validation: tf.data.Dataset
    test: tf.data.Dataset
    num_train: int
    num_validation: int
    num_test: int
    image_shape: tuple[int, ...]
    num_classes: int
    source: str  # "tfds" or the folder the original files were read from
    class_names: tuple[str, ...] = ()  # in class-index order
    report: Optional[dict] = None  # image_folder's cleaning report (data_report.json)


def _system_folder(name: str) -> Optional[pathlib.Path]:
    if not SYSTEM_DATASETS_DIR.is_dir():
        return None
    return local_files.locate(name, SYSTEM_DATASETS_DIR)


def _carve_validation(num_examples: int, fraction: float) -> int:
    return int(round(num_examples * fraction))


def _load_local(name: str, folder: pathlib.Path, validation_fraction: float) -> Splits:
    fmt = local_files.LOCAL_FORMATS[name]
    arrays = fmt.read(folder)
    x_train, y_train = arrays["train"]
    x_test, y_test = arrays["test"]
    num_val = _carve_validation(len(x_train), validation_fraction)
    cut = len(x_train) - num_val

    def to_ds(x, y):
        return tf.data.Dataset.from_tensor_slices((x, y))

    return Splits(
        train=to_ds(x_train[:cut], y_train[:cut]),
        validation=to_ds(x_train[cut:], y_train[cut:]),
        test=to_ds(x_test, y_test),
        num_train=cut, num_validation=num_val, num_test=len(x_test),
        image_shape=tuple(x_train.shape[1:]), num_classes=fmt.num_classes,
        source=str(folder), class_names=local_files.CLASS_NAMES[name])


# ---------------------------------------------------------------------------
# TensorFlow Datasets.

def network_available(host: str = DOWNLOAD_HOST) -> bool:
    """Whether the download host resolves; fails at once with no network."""
    try:
        socket.getaddrinfo(host, 443)
        return True
    except OSError:
        return False


def _count(ds: tf.data.Dataset) -> int:
    n = int(ds.cardinality())
    if n >= 0:
        return n
    return int(ds.reduce(np.int64(0), lambda count, _: count + 1))


def _tfds_splits(name: str, data_dir: Optional[str], validation_fraction: float,
                 download: bool) -> Splits:
    import tensorflow_datasets as tfds
    percent = int(round(100 * (1 - validation_fraction)))
    if not 0 < percent < 100:
        raise UserError(f"validation_fraction={validation_fraction} leaves no "
                        "training or no validation examples in whole percent")
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError:
        raise UserError(f"TFDS has no dataset named {name!r}") from None
    if download:
        builder.download_and_prepare()
    train, validation, test = builder.as_dataset(
        split=[f"train[:{percent}%]", f"train[{percent}%:]", "test"],
        as_supervised=True, shuffle_files=False)
    label = builder.info.features["label"]
    image = builder.info.features["image"]
    return Splits(
        train=train, validation=validation, test=test,
        num_train=_count(train), num_validation=_count(validation),
        num_test=_count(test), image_shape=tuple(image.shape),
        num_classes=label.num_classes, source="tfds", class_names=tuple(label.names))


def load(name: str, data_dir: Optional[str] = None,
         validation_fraction: float = 0.1, hparams: Optional[dict] = None) -> Splits:
    """Loads dataset `name`; see the module docstring for where from.
    `hparams`: the run's, for image_folder's image_size, image_channels and
    test_fraction."""
    if not 0.0 < validation_fraction < 1.0:
        raise UserError(f"validation_fraction must be between 0 and 1, got "
                        f"{validation_fraction}")
    if name == "image_folder":
        from common import image_folder
        return image_folder.load(data_dir, validation_fraction=validation_fraction, **{
            k: v for k, v in (hparams or {}).items() if k in image_folder.HPARAMS})
    if data_dir is not None:
        folder = pathlib.Path(data_dir).expanduser()
        if not folder.is_dir():
            raise UserError(f"--data_dir {data_dir} does not exist")
        local = local_files.locate(name, folder)
        if local is not None:
            return _load_local(name, local, validation_fraction)
    if data_dir is None:
        # Before TFDS, which would log that it reads a folder it then finds empty.
        system = _system_folder(name)
        if system is not None:
            return _load_local(name, system, validation_fraction)
    try:
        # download=False finds a prepared copy (or tfds.testing.mock_data).
        return _tfds_splits(name, data_dir, validation_fraction, download=False)
    except AssertionError:
        pass  # TFDS' way of saying "not prepared in data_dir".
    if not network_available():
        raise UserError(_offline_message(name, data_dir))
    try:
        return _tfds_splits(name, data_dir, validation_fraction, download=True)
    except OSError as e:  # requests' ConnectionError is an OSError.
        raise UserError(f"downloading {name!r} through TFDS failed: "
                        f"{str(e).splitlines()[0]}; "
                        + _offline_message(name, data_dir)) from None


def _offline_message(name: str, data_dir: Optional[str]) -> str:
    fmt = local_files.LOCAL_FORMATS.get(name)
    where = f" in --data_dir {data_dir}" if data_dir else ""
    message = (f"cannot download {name!r} through TFDS: no network, and no "
               f"prepared TFDS copy{where}")
    if fmt is None:
        return message
    return (f"{message}; offline, pass --data_dir=DIR holding {fmt.description} "
            f"or install them under {SYSTEM_DATASETS_DIR / name.replace('_', '-')}/")


# ---------------------------------------------------------------------------
# The pipelines.

def _to_float(images, labels):
    return tf.cast(images, tf.float32), labels


def make_pipeline(ds: tf.data.Dataset, batch_size: int, *, num_examples: int,
                  seed: Optional[int] = None, augment: Optional[Callable] = None,
                  deterministic: bool = False) -> tf.data.Dataset:
    """The training stream: cache, shuffle, augment, batch, cast, prefetch.

    `batch_size` is the global batch: a distribution strategy splits each
    batch across its replicas. Batches drop the remainder so every step has
    the same static shape (what TPUs need). Images stay uint8 until after
    batching, which keeps the cache small and the cast vectorised. With
    `deterministic`, parallel maps keep their order, so a seed repeats the
    stream exactly. (Evaluation splits go through evaluation.eval_dataset.)
    """
    ds = ds.cache()
    ds = ds.shuffle(max(1, min(num_examples, 60_000)), seed=seed,
                    reshuffle_each_iteration=True)
    if augment is not None:
        ds = ds.map(augment, num_parallel_calls=AUTOTUNE)
    ds = ds.batch(batch_size, drop_remainder=True, num_parallel_calls=AUTOTUNE)
    ds = ds.map(_to_float, num_parallel_calls=AUTOTUNE)
    # Across the workers of a cluster, shard by element (DATA): it works for
    # every source here, in-memory arrays and TFDS splits alike, where FILE
    # sharding would need at least one file per worker (MNIST's TFDS train
    # split is one file, and the validation split is a slice of it).
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = (
        tf.data.experimental.AutoShardPolicy.DATA)
    # Training order is random anyway: unless asked to repeat exactly, let
    # parallel maps hand over whichever element is ready first.
    options.deterministic = deterministic
    return ds.with_options(options).prefetch(AUTOTUNE)


@dataclasses.dataclass
class Pipelines:
    """A run's three streams: training batches (image float32 [B, H, W, C],
    label int64 [B]) and the evaluation splits as
    evaluation.eval_dataset() batches (padded, weighted)."""
    splits: Splits
    train: tf.data.Dataset
    validation: tf.data.Dataset
    test: tf.data.Dataset
    steps_per_epoch: int


def pipelines(splits: Splits, batch_size: int, *, num_workers: int = 1, seed: int = 0,
              augment: Optional[Callable] = None, deterministic: bool = False) -> Pipelines:
    """Checks the split sizes against the global batch and builds the
    streams; raises UserError for an empty split or a training split smaller
    than one global batch."""
    from common import evaluation
    if splits.num_train < batch_size:
        raise UserError(f"the training split has {splits.num_train} examples, fewer than "
                        f"one global batch of {batch_size}; use a smaller --batch_size")
    if splits.num_validation < 1:
        raise UserError(f"the validation split of {splits.source} is empty; raise "
                        "validation_fraction")
    if splits.num_test < 1:
        raise UserError(f"the test split of {splits.source} is empty")
    train = make_pipeline(splits.train, batch_size, num_examples=splits.num_train, seed=seed,
                          augment=augment, deterministic=deterministic)
    return Pipelines(
        splits=splits, train=train,
        validation=evaluation.eval_dataset(splits.validation, splits.num_validation,
                                           batch_size, num_workers),
        test=evaluation.eval_dataset(splits.test, splits.num_test, batch_size, num_workers),
        steps_per_epoch=splits.num_train // batch_size)


def pad_crop_flip(image: tf.Tensor, label: tf.Tensor, pad: int = 4):
    """The standard CIFAR augmentation: zero-pad by `pad`, crop back to the
    original size at a random place, flip left-right half of the time."""
    height, width = image.shape[0], image.shape[1]
    image = tf.image.pad_to_bounding_box(image, pad, pad, height + 2 * pad,
                                         width + 2 * pad)
    image = tf.image.random_crop(image, [height, width, image.shape[-1]])
    return tf.image.random_flip_left_right(image), label
