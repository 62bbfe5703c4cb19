"""Where a dataset comes from: TFDS, the datasets' original files, image folders.

`load()` returns the train / validation / test splits (common/data/splits.py)
as unbatched datasets of (image uint8 [H, W, C], label int64);
common/data/pipeline.py turns them into the streams a model trains on.

Where data comes from, in order:
  0. `--dataset=image_folder`: the folder `--data_dir` of class folders of
     images, cleaned, checked and cached by common/data/image_folder.py.
  1. `--data_dir` holding the original distribution files (MNIST and
     Fashion-MNIST IDX files, CIFAR-10's binary version): read and validated
     by common/data/local_files.py.
  2. Without `--data_dir`: the folder Debian's dataset packages install to,
     /usr/share/datasets/<name>/ (`apt install dataset-fashion-mnist`).
  3. A prepared TFDS copy (in `--data_dir`, or TFDS' default folder).
  4. A TFDS download; with no network, one line saying so and naming the
     local-files alternative (TFDS would otherwise retry for minutes).

The validation split is carved deterministically from the end of train
(the last `validation_fraction` of it: rounded to whole examples for the
original files, to whole percent for TFDS), so it never overlaps the
training examples; an image folder carves it per class instead
(common/data/image_folder.py).
"""

import pathlib
import socket
from typing import Optional

import numpy as np
import tensorflow as tf

from common.data import image_folder, local_files
from common.data.splits import Splits
from common.errors import UserError

# Where Debian's dataset-* packages put the original files.
SYSTEM_DATASETS_DIR = pathlib.Path("/usr/share/datasets")
# The host TFDS downloads MNIST-family files from; checked before a download.
DOWNLOAD_HOST = "storage.googleapis.com"


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
    """Whether the download host resolves; fails at once with no network.

    Only a DNS look-up (socket.getaddrinfo for port 443); no connection is
    made.

    Args:
        host: the host name to resolve.

    Returns:
        True where the name resolves, False on any OSError.
    """
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


def load(name: str, data_dir: Optional[str] = None, validation_fraction: float = 0.1, *,
         image_size: int = 0, image_channels: int = 0, test_fraction: float = 0.1) -> Splits:
    """Loads dataset `name` from the first source that has it (the module
    docstring's order).

    Args:
        name: a TFDS name (mnist, fashion_mnist, cifar10, ...) or
            "image_folder".
        data_dir: TFDS' data_dir, a folder of the original files, or the
            image folder; None: the system's dataset folder, then TFDS'.
        validation_fraction: share of the training split held out for
            validation, in (0, 1).
        image_size: image_folder only: images resized to this many pixels
            square (0: their own size).
        image_channels: image_folder only: 1 grey, 3 RGB, 0 the folder's.
        test_fraction: image_folder with one folder per class only: share of
            each class held out for testing, in (0, 1).

    Returns:
        Splits of (image uint8 [H, W, C], label int64) datasets.

    Raises:
        UserError: a bad fraction, a missing --data_dir, corrupt files, an
            unknown TFDS name, or no network for a download (naming the
            local-files alternative).
    """
    if not 0.0 < validation_fraction < 1.0:
        raise UserError(f"validation_fraction must be between 0 and 1, got "
                        f"{validation_fraction}")
    if name == image_folder.DATASET:
        return image_folder.load(data_dir, validation_fraction=validation_fraction,
                                 test_fraction=test_fraction, image_size=image_size,
                                 image_channels=image_channels)
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
