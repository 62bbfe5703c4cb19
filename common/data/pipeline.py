"""From splits to the streams a model reads: training batches, exact
evaluation batches, and the standard CIFAR augmentation.

Training: cache, shuffle, augment, batch by the global batch, cast to
float32, prefetch (make_pipeline). Evaluation: every example once, padded
with zero-weight examples to whole global batches (eval_dataset), which is
what lets common/training/evaluation.py score exactly on any number of replicas.
"""

from typing import Callable, Optional

import numpy as np
import tensorflow as tf

from common.data.splits import Pipelines, Splits
from common.errors import UserError

AUTOTUNE = tf.data.AUTOTUNE


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
    stream exactly. (Evaluation splits go through eval_dataset() below.)

    The examples are cached in memory as they are (before augmentation, so
    `augment` draws anew every epoch), shuffled with a buffer of
    max(1, min(num_examples, 60,000)) examples and reshuffled on every
    iteration. The stream is not repeated: one iteration is one epoch. Across a
    cluster's workers tf.data shards it by element (AutoShardPolicy.DATA).

    Args:
        ds: unbatched (image uint8 [H, W, C], label int64 []) examples.
        batch_size: the global batch, in examples.
        num_examples: how many examples `ds` holds (sizes the shuffle buffer).
        seed: the shuffle's seed; None: TensorFlow's global seed decides (a
            random order where none is set).
        augment: (image, label) -> (image, label), mapped over single
            examples before batching, or None.
        deterministic: parallel maps keep their order (tf.data.Options
            .deterministic); off, they hand over whichever element is ready.

    Returns:
        tf.data.Dataset of (images float32 [B, H, W, C], labels int64 [B]),
        B = batch_size, num_examples // batch_size batches per iteration;
        pixels keep their 0..255 values (not rescaled).
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


def pipelines(splits: Splits, batch_size: int, *, num_workers: int = 1, seed: int = 0,
              augment: Optional[Callable] = None, deterministic: bool = False) -> Pipelines:
    """Checks the split sizes against the global batch and builds the
    streams; raises UserError for an empty split or a training split smaller
    than one global batch.

    Args:
        splits: the loaded dataset (common/data/sources.py's load()).
        batch_size: the global batch, in examples.
        num_workers: the cluster's workers (1 without a cluster); the
            evaluation streams are padded to a multiple of batch_size *
            num_workers examples (eval_dataset()).
        seed: the training stream's shuffle seed.
        augment: (image, label) -> (image, label) for training examples, or
            None.
        deterministic: the training stream repeats exactly for a seed.

    Returns:
        Pipelines: `train` from make_pipeline(), `validation` and `test` from
        eval_dataset(), and steps_per_epoch = num_train // batch_size.

    Raises:
        UserError: the training split holds fewer examples than batch_size,
            or the validation or the test split is empty.
    """
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
        validation=eval_dataset(splits.validation, splits.num_validation,
                                           batch_size, num_workers),
        test=eval_dataset(splits.test, splits.num_test, batch_size, num_workers),
        steps_per_epoch=splits.num_train // batch_size)


def pad_crop_flip(image: tf.Tensor, label: tf.Tensor, pad: int = 4):
    """The standard CIFAR augmentation: zero-pad by `pad`, crop back to the
    original size at a random place, flip left-right half of the time.

    The augmentation of He et al., "Deep Residual Learning for Image
    Recognition" (CVPR 2016), section 4.2: 4 pixels of padding on each side,
    a random 32x32 crop, a random horizontal flip.

    Args:
        image: one example, [H, W, C] with static H, W and C, any dtype
            (uint8 here).
        label: the example's label, passed through.
        pad: pixels of zeros added on each side.

    Returns:
        (image [H, W, C] of the same dtype, label).
    """
    height, width = image.shape[0], image.shape[1]
    image = tf.image.pad_to_bounding_box(image, pad, pad, height + 2 * pad,
                                         width + 2 * pad)
    image = tf.image.random_crop(image, [height, width, image.shape[-1]])
    return tf.image.random_flip_left_right(image), label


def eval_dataset(split: tf.data.Dataset, num_examples: int, global_batch: int,
                 num_workers: int = 1) -> tf.data.Dataset:
    """(images float32 [B, H, W, C], labels int64 [B], weights float32 [B])
    batches of exactly `global_batch`: the split's examples with weight 1,
    then zero-weight padding up to a multiple of global_batch * num_workers.

    The padding examples are all-zero images with label 0; an empty split
    gets one whole multiple of them. Every example comes once, in the
    split's order (the stream is cached and deterministic), and across a
    cluster's workers tf.data shards it by element (AutoShardPolicy.DATA).
    A weighted metric over the batches is thus exact on any number of
    replicas (common/training/evaluation.py).

    Args:
        split: unbatched (image uint8 [H, W, C], label int64 []) examples.
        num_examples: how many examples `split` holds.
        global_batch: the global batch, in examples.
        num_workers: the cluster's workers (at least 1 is used).

    Returns:
        tf.data.Dataset of (images float32 [B, H, W, C], labels [B] of the
        split's label dtype, weights float32 [B]), B = global_batch; the
        batch count is a multiple of num_workers.
    """
    multiple = global_batch * max(1, num_workers)
    pad = (-num_examples) % multiple
    if num_examples == 0:
        pad = multiple
    weighted = split.map(lambda x, y: (x, y, tf.constant(1.0)))
    if pad:
        image_spec, label_spec = split.element_spec
        filler = tf.data.Dataset.from_tensors(
            (tf.zeros(image_spec.shape, image_spec.dtype),
             tf.zeros(label_spec.shape, label_spec.dtype), tf.constant(0.0))).repeat(pad)
        weighted = weighted.concatenate(filler)
    ds = weighted.cache().batch(global_batch, drop_remainder=True)
    ds = ds.map(lambda x, y, w: (tf.cast(x, tf.float32), y, w), num_parallel_calls=AUTOTUNE)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = (
        tf.data.experimental.AutoShardPolicy.DATA)
    options.deterministic = True
    return ds.with_options(options).prefetch(AUTOTUNE)


def split_arrays(split: tf.data.Dataset, limit: Optional[int] = None
                 ) -> tuple[np.ndarray, np.ndarray]:
    """A split as NumPy arrays (images uint8 [N, H, W, C], labels int64 [N]).

    Args:
        split: unbatched (image uint8 [H, W, C], label) examples.
        limit: read only the first `limit` examples; None or 0: all.

    Returns:
        (images [N, H, W, C] of the split's image dtype, uint8 for every
        source here; labels int64 [N]), in the split's order; with no
        examples, uint8 [0, H, W, C] and int64 [0].
    """
    ds = split.take(limit) if limit else split
    images, labels = [], []
    for image, label in ds.batch(1024):
        images.append(image.numpy())
        labels.append(label.numpy())
    if not images:
        shape = tuple(split.element_spec[0].shape)
        return np.zeros((0,) + shape, np.uint8), np.zeros((0,), np.int64)
    return np.concatenate(images), np.concatenate(labels).astype(np.int64)
