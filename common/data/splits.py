"""What a dataset is once loaded: its three splits, and a run's three streams."""

import dataclasses
from typing import Optional, Sequence

import tensorflow as tf

from common.errors import UserError


@dataclasses.dataclass
class Splits:
    """The three splits of a dataset and what a model needs to know of it.

    Attributes:
        train, validation, test: unbatched datasets of (image uint8
            [H, W, C], label int64 []).
        num_train, num_validation, num_test: examples in each split.
        image_shape: (H, W, C) of every image.
        num_classes: labels are 0..num_classes-1.
        source: "tfds", or the folder the files were read from.
        class_names: the classes' names in class-index order.
        report: image_folder's cleaning report (data_report.json), or None.
    """
    train: tf.data.Dataset
    validation: tf.data.Dataset
    test: tf.data.Dataset
    num_train: int
    num_validation: int
    num_test: int
    image_shape: tuple[int, ...]
    num_classes: int
    source: str
    class_names: tuple[str, ...] = ()
    report: Optional[dict] = None


@dataclasses.dataclass
class Pipelines:
    """A run's three streams (common/data/pipeline.py builds them).

    Attributes:
        splits: the Splits they come from.
        train: training batches (image float32 [B, H, W, C], label int64
            [B]), B the global batch, reshuffled every epoch.
        validation, test: eval_dataset() batches (image float32, label
            int64, weight float32), padded to whole global batches.
        steps_per_epoch: training batches in one epoch.
    """
    splits: Splits
    train: tf.data.Dataset
    validation: tf.data.Dataset
    test: tf.data.Dataset
    steps_per_epoch: int


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
