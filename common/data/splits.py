"""What a dataset is once loaded: its three splits, and a run's three streams.

A split is not held in memory: it is a reader (Split) that knows how many
examples it has, how many bytes they take once decoded, and how to cut
itself between the workers of a cluster (by file where it has at least as
many files as workers, else by element). common/data/pipeline.py decides
which splits are cached in memory and builds the streams.
"""

import dataclasses
import math
from typing import Optional, Sequence

import numpy as np
import tensorflow as tf

from common.errors import UserError


class Split:
    """One split of a dataset, read from where it lives.

    Subclasses (prepared.ShardedSplit, sources.TfdsSplit) implement
    num_files, share_size and examples.

    Attributes:
        name: train, validation or test.
        num_examples: the examples a full read yields.
        image_shape: (H, W, C) of every image (uint8).
        where: where it is read from, for the log.
    """
    name: str
    num_examples: int
    image_shape: tuple[int, ...]
    where: str

    @property
    def example_bytes(self) -> int:
        """One decoded example's bytes: its pixels and its int64 label."""
        return int(np.prod(self.image_shape)) + 8

    def num_files(self) -> int:
        """The files the split is read from (what workers can divide).

        Returns:
            At least 1.

        Raises:
            NotImplementedError: in this base class.
        """
        raise NotImplementedError

    def by_file(self, num_workers: int) -> bool:
        """Whether `num_workers` workers divide the split by file (each
        reads only its files) rather than by element (each reads every
        file and keeps every num_workers-th example).

        Args:
            num_workers: the cluster's workers.

        Returns:
            True where the split has at least as many files as workers.
        """
        return num_workers > 1 and self.num_files() >= num_workers

    def share_size(self, num_workers: int, index: int) -> int:
        """The examples worker `index` of `num_workers` reads.

        Args:
            num_workers: the cluster's workers (1 outside one).
            index: this worker's index, 0..num_workers-1.

        Returns:
            Its examples; the shares of all workers add up to num_examples.

        Raises:
            NotImplementedError: in this base class.
        """
        raise NotImplementedError

    def share_bytes(self, num_workers: int, index: int) -> int:
        """What worker `index` reads, in decoded bytes.

        Args:
            num_workers: the cluster's workers.
            index: this worker's index.

        Returns:
            share_size() times example_bytes.
        """
        return self.share_size(num_workers, index) * self.example_bytes

    def examples(self, num_workers: int = 1, index: int = 0, *, shuffle_files: bool = False,
                 seed: Optional[int] = None, deterministic: bool = True) -> tf.data.Dataset:
        """Worker `index`'s share of the split, unbatched.

        Args:
            num_workers: the cluster's workers (1 outside one).
            index: this worker's index.
            shuffle_files: read the files in a new random order on every
                iteration (training); else in order, once each.
            seed: the file order's seed (None: random).
            deterministic: parallel reads keep their order.

        Returns:
            tf.data.Dataset of (image uint8 [H, W, C], label int64 []),
            share_size(num_workers, index) of them.

        Raises:
            NotImplementedError: in this base class.
        """
        raise NotImplementedError

    def dataset(self) -> tf.data.Dataset:
        """The whole split, in order.

        Returns:
            tf.data.Dataset of (image uint8 [H, W, C], label int64 []).
        """
        return self.examples()

    def __iter__(self):
        """Iterates over dataset(): (image, label) tensors, one at a time."""
        return iter(self.dataset())

    def records(self, num_workers: int = 1, index: int = 0, *, shuffle_files: bool = False,
                seed: Optional[int] = None, deterministic: bool = True
                ) -> Optional[tf.data.Dataset]:
        """Worker `index`'s share as raw records (strings), for splits that
        store examples as fixed-size records (parsed a batch at a time by
        parse_batch(), which is much cheaper than one at a time); None for
        other splits.

        Args:
            num_workers: as for examples().
            index: as for examples().
            shuffle_files: as for examples().
            seed: as for examples().
            deterministic: as for examples().

        Returns:
            tf.data.Dataset of [] strings, or None.
        """
        return None

    def parse_batch(self, records: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """A batch of records() -> (images uint8 [B, H, W, C], labels int64
        [B], indices int64 [B]); filler() records have index -1.

        Args:
            records: [B] strings.

        Returns:
            (images, labels, indices).

        Raises:
            NotImplementedError: in this base class.
        """
        raise NotImplementedError

    def filler(self) -> tf.Tensor:
        """One padding record for records() streams.

        Returns:
            [] string: an all-zero image, label 0, index -1.

        Raises:
            NotImplementedError: in this base class.
        """
        raise NotImplementedError

    @staticmethod
    def element_share(total: int, num_workers: int, index: int) -> int:
        """Examples of `total` that worker `index` keeps when every worker
        keeps every num_workers-th one (tf.data's shard()).

        Args:
            total: the examples read.
            num_workers: the workers.
            index: the worker.

        Returns:
            ceil((total - index) / num_workers), at least 0.
        """
        return max(0, math.ceil((total - index) / num_workers))


@dataclasses.dataclass
class Splits:
    """The three splits of a dataset and what a model needs to know of it.

    Attributes:
        train, validation, test: the splits (Split readers of (image uint8
            [H, W, C], label int64 []) examples).
        num_train, num_validation, num_test: examples in each split.
        image_shape: (H, W, C) of every image.
        num_classes: labels are 0..num_classes-1.
        source: "tfds", or the folder the files were read from.
        class_names: the classes' names in class-index order.
        report: image_folder's cleaning report (data_report.json), or None.
        file_set: image_folder's fingerprint of its files (what a resumed
            run must find again), or None.
    """
    train: Split
    validation: Split
    test: Split
    num_train: int
    num_validation: int
    num_test: int
    image_shape: tuple[int, ...]
    num_classes: int
    source: str
    class_names: tuple[str, ...] = ()
    report: Optional[dict] = None
    file_set: Optional[dict] = None


@dataclasses.dataclass
class Pipelines:
    """A run's three streams (common/data/pipeline.py builds them).

    Attributes:
        splits: the Splits they come from.
        train: training batches (image float32 [B, H, W, C], label int64
            [B]), B the global batch, reshuffled every epoch.
        validation, test: eval_dataset() batches (image float32, label
            int64, weight float32), padded to whole global batches.
        steps_per_epoch: training batches in one epoch: ceil(num_train /
            B); the stream repeats, so an epoch's last batch is filled from
            the next pass and no example is skipped.
        in_memory: {split: whether it is cached in memory}.
    """
    splits: Splits
    train: tf.data.Dataset
    validation: tf.data.Dataset
    test: tf.data.Dataset
    steps_per_epoch: int
    in_memory: dict = dataclasses.field(default_factory=dict)


def check_class_names(names: Sequence, where: str) -> None:
    """Class names as labels.txt and predictions can carry them: strings,
    not empty, each on one line (no line break or separator of any kind:
    str.splitlines' set, U+2028 included) of printable characters (no
    terminal escape codes).

    Args:
        names: the class names, in class-index order.
        where: where they come from, for the message (a folder, a file).

    Raises:
        UserError: naming the first bad name and where it comes from.
    """
    for name in names:
        if not isinstance(name, str) or not name.strip() or name.splitlines() != [name] \
                or not name.isprintable():
            raise UserError(f"bad class name {name!r} in {where}: a class name must be one "
                            "line of printable text (rename the class)")
