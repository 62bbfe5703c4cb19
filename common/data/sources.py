"""Where a dataset comes from: TFDS, the datasets' original files, image folders.

`load()` returns the train / validation / test splits (common/data/splits.py)
as readers of (image uint8 [H, W, C], label int64) examples that stream from
disk; common/data/pipeline.py turns them into the streams a model trains on
and decides which are cached in memory. Local sources (image folders, the
original files) are written once into a prepared copy of TFRecord shards
(common/data/prepared.py) that every later run reads; TFDS splits are read
from TFDS' own files (shuffled files, TFDS' read configuration, no automatic
in-memory cache).

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

import hashlib
import itertools
import os
import pathlib
import socket
from typing import Optional

from absl import logging
import numpy as np
import tensorflow as tf

from common.data import image_folder, local_files, prepared
from common.data.splits import Split, Splits
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
    """The original files in `folder`, prepared once into a copy of shards:
    train's last validation_fraction becomes the validation split."""
    fmt = local_files.LOCAL_FORMATS[name]
    streams = fmt.streams(folder)
    train, test = streams["train"], streams["test"]
    num_val = _carve_validation(train.count, validation_fraction)
    cut = train.count - num_val
    files = sorted({f for stream in streams.values() for f in stream.files})
    stats = [(str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns) for f in files]
    key = prepared.key_of({"dataset": name, "files": stats, "cut": cut,
                           "shape": list(train.image_shape)})
    family = f"{name}-{hashlib.sha256(os.fsencode(str(folder.resolve()))).hexdigest()[:12]}"
    pixels = int(np.prod(train.image_shape))
    sizes = {"train": cut, "validation": num_val, "test": test.count}

    def write(writer: prepared.Writer):
        counts = {split: prepared.shard_count(n, pixels) for split, n in sizes.items()}
        done = {(split, k): writer.done(split, k, counts[split])
                for split in sizes for k in range(counts[split])}
        prepared.say_resumed(writer, len(done), f"{family}-{key}")
        progress = prepared.Progress(train.count + test.count, name)
        sources = {"train": train.examples(), "test": test.examples()}
        index = 0
        for split, first_index in (("train", 0), ("validation", cut), ("test", train.count)):
            examples = sources["test" if split == "test" else "train"]
            index = first_index
            for k in range(counts[split]):
                n = (k + 1) * sizes[split] // counts[split] - k * sizes[split] // counts[split]
                block = itertools.islice(examples, n)
                if done[(split, k)] is not None:
                    for _ in block:  # already written: read past it
                        pass
                else:
                    writer.shard(split, k, counts[split], (
                        (index + j, label, image) for j, (image, label) in enumerate(block)))
                index += n
                progress.add(n)
        for split, examples in sources.items():
            if next(examples, None) is not None:
                raise UserError(f"the {split} files of {folder} hold more examples than "
                                "their headers say")
        return counts, {}, {}

    copy = prepared.prepare(family, key, train.image_shape, write,
                            what=f"{name}'s original files in {folder}")
    for split, n in sizes.items():
        if copy.splits[split].num_examples != n:
            raise UserError(f"the prepared copy {copy.folder} holds "
                            f"{copy.splits[split].num_examples} {split} examples, "
                            f"{n} expected; delete it and run again")
    readers = prepared.splits_of(copy)
    return Splits(
        train=readers["train"], validation=readers["validation"], test=readers["test"],
        num_train=cut, num_validation=num_val, num_test=test.count,
        image_shape=tuple(train.image_shape), num_classes=fmt.num_classes,
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


class TfdsSplit(Split):
    """A split of a prepared TFDS dataset, read by TFDS (its files
    interleaved, shuffled for training, TFDS' automatic in-memory cache off).

    Between workers: by example range (tfds.even_splits, which reads only
    the files that hold the worker's range) where TFDS knows the split's
    files and there are at least as many as workers; else by element.

    Args:
        builder: the TFDS builder.
        spec: the split, as TFDS reads it ("train[:90%]").
        name: train, validation or test.
        count: its examples.
        image_shape: (H, W, C).
    """

    def __init__(self, builder, spec: str, name: str, count: int, image_shape):
        self.builder, self.spec, self.name = builder, spec, name
        self.num_examples = count
        self.image_shape = tuple(image_shape)
        self.where = f"TFDS {builder.name} {spec}"

    def num_files(self) -> int:
        """The TFDS files the split reads.

        Returns:
            The distinct files of TFDS' file instructions for the split; 1
            where TFDS does not say (mock data).
        """
        try:
            return max(1, len({f.filename for f in
                               self.builder.info.splits[self.spec].file_instructions}))
        except Exception:  # mock data, or a TFDS without file instructions
            return 1

    def _ranges(self, num_workers: int):
        import tensorflow_datasets as tfds
        try:
            specs = tfds.even_splits(self.spec, n=num_workers)
            counts = [self.builder.info.splits[s].num_examples for s in specs]
        except Exception:
            return None
        return (specs, counts) if sum(counts) == self.num_examples else None

    def by_file(self, num_workers: int) -> bool:
        """Whether workers read separate ranges of files (see the class).

        Args:
            num_workers: the cluster's workers.

        Returns:
            True where there are at least as many files as workers and TFDS
            knows each worker's range's count.
        """
        return super().by_file(num_workers) and self._ranges(num_workers) is not None

    def share_size(self, num_workers: int, index: int) -> int:
        """Examples worker `index` of `num_workers` reads.

        Args:
            num_workers: the cluster's workers.
            index: this worker's index.

        Returns:
            Its range's examples (tfds.even_splits), or every
            num_workers-th example's count.
        """
        if num_workers <= 1:
            return self.num_examples
        if self.by_file(num_workers):
            return self._ranges(num_workers)[1][index]
        return self.element_share(self.num_examples, num_workers, index)

    def examples(self, num_workers: int = 1, index: int = 0, *, shuffle_files: bool = False,
                 seed: Optional[int] = None, deterministic: bool = True) -> tf.data.Dataset:
        """Worker `index`'s share, read by TFDS (see Split.examples).

        Args:
            num_workers: the cluster's workers.
            index: this worker's index.
            shuffle_files: TFDS' file shuffling (reshuffled every
                iteration), interleaving 4 files.
            seed: TFDS' shuffle seed.
            deterministic: TFDS' reads and the label cast keep their order.

        Returns:
            tf.data.Dataset of (image uint8 [H, W, C], label int64 []).
        """
        import tensorflow_datasets as tfds
        spec = self.spec
        by_file = num_workers > 1 and self.by_file(num_workers)
        if by_file:
            spec = self._ranges(num_workers)[0][index]
        config = tfds.ReadConfig(shuffle_seed=seed, try_autocache=False,
                                 interleave_cycle_length=4 if shuffle_files else 1)
        # Divided by element, every worker must read the same order.
        config.options.deterministic = deterministic or (num_workers > 1 and not by_file)
        ds = self.builder.as_dataset(split=spec, as_supervised=True,
                                     shuffle_files=shuffle_files, read_config=config)
        if num_workers > 1 and not by_file:
            ds = ds.shard(num_workers, index)
        return ds.map(lambda image, label: (image, tf.cast(label, tf.int64)),
                      num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)


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
    label = builder.info.features["label"]
    image = builder.info.features["image"]
    specs = {"train": f"train[:{percent}%]", "validation": f"train[{percent}%:]",
             "test": "test"}
    readers = {}
    for split, spec in specs.items():
        try:
            count = builder.info.splits[spec].num_examples
        except Exception:  # mock data: count what as_dataset gives
            count = _count(builder.as_dataset(split=spec, as_supervised=True))
        readers[split] = TfdsSplit(builder, spec, split, count, image.shape)
    return Splits(
        train=readers["train"], validation=readers["validation"], test=readers["test"],
        num_train=readers["train"].num_examples,
        num_validation=readers["validation"].num_examples,
        num_test=readers["test"].num_examples, image_shape=tuple(image.shape),
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
            splits = _load_local(name, system, validation_fraction)
            logging.info("Dataset %s: its original files in %s (found without --data_dir: "
                         "the folder Debian's dataset packages install to)", name, system)
            return splits
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
    if fmt is not None:
        message += (f"; offline, pass --data_dir=DIR holding {fmt.description} "
                    f"or install them under {SYSTEM_DATASETS_DIR / name.replace('_', '-')}/")
    installed = [other for other in sorted(local_files.LOCAL_FORMATS)
                 if other != name and _system_folder(other) is not None]
    if installed:
        verbs = "is installed" if len(installed) == 1 else "are installed"
        message += (f"; {', '.join(installed)} {verbs} under {SYSTEM_DATASETS_DIR}/ and "
                    f"{'works' if len(installed) == 1 else 'work'} offline: "
                    f"--dataset={installed[0]}")
    return message
