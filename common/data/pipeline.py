"""From splits to the streams a model reads: training batches, exact
evaluation batches, and the standard CIFAR augmentation.

Memory: a split is cached in memory only where it fits the run's memory
budget (common/data/memory.py), else it streams from disk every epoch
through a shuffle buffer bounded in bytes (SHUFFLE_BYTES); one line at
start-up says which and why.

Training (train_stream): this worker's share of the training split,
[cached,] shuffled, repeated, augmented, batched by the global batch, cast
to float32, prefetched; an epoch is ceil(examples / batch) steps, so no
example is skipped (the last batch of a pass is filled from the next one).
Evaluation (eval_stream): every example of this worker's share once, padded
with zero-weight examples so that every worker runs the same whole number
of global batches, which is what lets common/training/evaluation.py score
exactly on any number of replicas and workers.

Across the workers of a cluster each worker reads only its share of a
split (common/data/splits.py: by file where there are at least as many
files as workers, else by element), and tf.data's own auto-sharding is off.
"""

import math
from typing import Callable, Optional

from absl import logging
import numpy as np
import tensorflow as tf

from common.data import memory
from common.data.splits import Pipelines, Split, Splits
from common.errors import UserError

AUTOTUNE = tf.data.AUTOTUNE
SHUFFLE_BYTES = 256 * 2**20    # the most a streaming shuffle buffer holds ...
SHUFFLE_SHARE = 4              # ... and at most 1/4 of the memory budget ...
SHUFFLE_FLOOR_BYTES = 32 * 2**20  # ... but never less than this (budget 0 too)
MIN_SHUFFLE_EXAMPLES = 64      # ... nor fewer examples than this
MIN_AUTOTUNE_BYTES = 64 * 2**20
# Evaluation streams (validation every epoch, beside the training stream's
# buffers) keep a fixed few batches in flight: scoring is not what waits.
EVAL_BATCHES_IN_FLIGHT = 2


def _to_float(images, labels):
    return tf.cast(images, tf.float32), labels


def _options(deterministic: bool, budget: Optional[memory.Budget]) -> tf.data.Options:
    options = tf.data.Options()
    # This project shards between workers itself (Split.examples).
    options.experimental_distribute.auto_shard_policy = (
        tf.data.experimental.AutoShardPolicy.OFF)
    options.deterministic = deterministic
    if budget is not None:
        # What the training stream's autotuned buffers (prefetch, parallel
        # maps) may hold: a quarter of the budget, as the shuffle buffer.
        options.autotune.ram_budget = max(budget.total // 4, MIN_AUTOTUNE_BYTES)
    return options


def shuffle_buffer(split: Split, examples: int, in_memory: bool,
                   budget: Optional[memory.Budget] = None) -> int:
    """The training shuffle buffer, in examples: the whole share where it is
    in memory, else as many as hold in SHUFFLE_BYTES or a SHUFFLE_SHARE-th
    of the memory budget, whichever is smaller, but at least
    SHUFFLE_FLOOR_BYTES (a budget of 0 still shuffles) and at least
    MIN_SHUFFLE_EXAMPLES; at most the share.

    Args:
        split: the training split.
        examples: this worker's examples.
        in_memory: whether the share is cached in memory.
        budget: the run's memory budget, or None (SHUFFLE_BYTES alone).

    Returns:
        The buffer's size, at least 1.
    """
    if in_memory:
        return max(1, examples)
    room = SHUFFLE_BYTES if budget is None else min(
        SHUFFLE_BYTES, max(SHUFFLE_FLOOR_BYTES, budget.total // SHUFFLE_SHARE))
    return max(1, min(examples, max(MIN_SHUFFLE_EXAMPLES, room // split.example_bytes)))


def train_stream(split: Split, batch_size: int, *, in_memory: bool, num_workers: int = 1,
                 worker_index: int = 0, seed: Optional[int] = None,
                 augment: Optional[Callable] = None, deterministic: bool = False,
                 budget: Optional[memory.Budget] = None) -> tf.data.Dataset:
    """The training stream of this worker: its share of `split`, [cached,]
    shuffled, repeated, augmented, batched, cast, prefetched.

    `batch_size` is the global batch: a distribution strategy splits each
    batch across its replicas (and, in a cluster, each worker takes
    batch_size / num_workers of its own stream per step). Images stay uint8
    until after batching, which keeps the cache small and the cast
    vectorised. The shuffle draws from a buffer of shuffle_buffer()
    examples, reshuffled every pass (and the order of the files read is
    reshuffled every pass too). With `deterministic`, parallel reads and maps
    keep their order, so a seed repeats the stream exactly. The stream never
    ends: Keras is given steps_per_epoch.

    Args:
        split: the training split.
        batch_size: the global batch, in examples.
        in_memory: cache this worker's share in memory after the first pass.
        num_workers: the cluster's workers (1 without a cluster).
        worker_index: this worker's index.
        seed: the shuffle's seed; None: TensorFlow's global seed decides.
        augment: (image, label) -> (image, label), mapped over single
            examples before batching, or None.
        deterministic: parallel reads and maps keep their order.
        budget: the memory budget (bounds tf.data's autotuned buffers), or
            None.

    Returns:
        tf.data.Dataset of (images float32 [B, H, W, C], labels int64 [B]),
        B = batch_size, repeated without end; pixels keep their 0..255
        values (not rescaled).
    """
    examples = split.share_size(num_workers, worker_index)
    read = dict(shuffle_files=True, seed=seed, deterministic=deterministic)
    records = None if augment is not None else split.records(num_workers, worker_index, **read)
    ds = records if records is not None else split.examples(num_workers, worker_index, **read)
    if in_memory:
        ds = ds.cache()
    ds = ds.shuffle(shuffle_buffer(split, examples, in_memory, budget), seed=seed,
                    reshuffle_each_iteration=True).repeat()
    if augment is not None:
        ds = ds.map(augment, num_parallel_calls=AUTOTUNE, deterministic=deterministic)
    ds = ds.batch(batch_size, drop_remainder=True, num_parallel_calls=AUTOTUNE,
                  deterministic=deterministic)
    if records is not None:  # parsed a batch at a time
        ds = ds.map(lambda batch: _to_float(*split.parse_batch(batch)[:2]),
                    num_parallel_calls=AUTOTUNE, deterministic=deterministic)
    else:
        ds = ds.map(_to_float, num_parallel_calls=AUTOTUNE, deterministic=deterministic)
    return ds.with_options(_options(deterministic, budget)).prefetch(AUTOTUNE)


def make_pipeline(split: Split, batch_size: int, *, seed: Optional[int] = None,
                  augment: Optional[Callable] = None, deterministic: bool = False,
                  in_memory: bool = True) -> tf.data.Dataset:
    """One pass of the training stream (the whole split on one worker):
    ceil(examples / batch_size) batches of train_stream(). For tools and
    tests; runs use train_stream() with Keras' steps_per_epoch.

    Args:
        split: the training split.
        batch_size: the global batch.
        seed: the shuffle's seed.
        augment: as train_stream's.
        deterministic: as train_stream's.
        in_memory: as train_stream's.

    Returns:
        tf.data.Dataset of ceil(split.num_examples / batch_size) batches
        (images float32 [B, H, W, C], labels int64 [B]).
    """
    return train_stream(split, batch_size, in_memory=in_memory, seed=seed, augment=augment,
                        deterministic=deterministic).take(
        steps_per_epoch(split.num_examples, batch_size))


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
    """Training steps in one epoch: ceil(num_examples / batch_size), so an
    epoch covers every example once (the repeated stream fills the last
    batch from the next pass).

    Args:
        num_examples: the training split's examples (all workers').
        batch_size: the global batch.

    Returns:
        At least 1.
    """
    return max(1, math.ceil(num_examples / batch_size))


def _decide(splits: Splits, budget: memory.Budget, num_workers: int, worker_index: int,
            batch_size: int) -> dict[str, bool]:
    """Which splits this worker caches in memory, logged in one line."""
    in_memory, parts = {}, []
    for name in ("train", "validation", "test"):
        split: Split = getattr(splits, name)
        examples = split.share_size(num_workers, worker_index)
        size = examples * split.example_bytes
        in_memory[name] = budget.take(size)
        how = "in memory" if in_memory[name] else f"streamed from {split.num_files()} file(s)"
        if not in_memory[name] and name == "train":
            buffer = shuffle_buffer(split, examples, False, budget)
            budget.take(buffer * split.example_bytes)
            how += (f" through a shuffle buffer of {buffer:,} examples "
                    f"({memory.human(buffer * split.example_bytes)})")
        parts.append(f"{name} {examples:,} examples ({memory.human(size)}) {how}")
    share = ""
    if num_workers > 1:
        mine = sum(getattr(splits, n).share_bytes(num_workers, worker_index) for n in in_memory)
        whole = sum(getattr(splits, n).share_bytes(1, 0) for n in in_memory)
        share = (f"; worker {worker_index + 1} of {num_workers} reads {memory.human(mine)} of "
                 f"the {memory.human(whole)} ({mine / max(1, whole):.0%}; "
                 f"{'by file' if splits.train.by_file(num_workers) else 'by element'})")
    logging.info("Data %s: %s; memory budget %s: %s%s", splits.train.where, "; ".join(parts),
                 memory.human(budget.total), budget.how, share)
    return in_memory


def pipelines(splits: Splits, batch_size: int, *, num_workers: int = 1, worker_index: int = 0,
              seed: int = 0, augment: Optional[Callable] = None, deterministic: bool = False,
              budget: Optional[memory.Budget] = None) -> Pipelines:
    """Checks the split sizes against the global batch, decides what is
    cached in memory and builds the streams; raises UserError for an empty
    split or a training split smaller than one global batch.

    Args:
        splits: the loaded dataset (common/data/sources.py's load()).
        batch_size: the global batch, in examples.
        num_workers: the cluster's workers (1 without a cluster).
        worker_index: this worker's index.
        seed: the training stream's shuffle seed.
        augment: (image, label) -> (image, label) for training examples, or
            None.
        deterministic: the training stream repeats exactly for a seed.
        budget: the memory budget; None: memory.budget("auto").

    Returns:
        Pipelines: `train` from train_stream(), `validation` and `test` from
        eval_stream(), steps_per_epoch = ceil(num_train / batch_size), and
        which splits are in memory.

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
    budget = budget if budget is not None else memory.budget()
    in_memory = _decide(splits, budget, num_workers, worker_index, batch_size)
    train = train_stream(splits.train, batch_size, in_memory=in_memory["train"],
                         num_workers=num_workers, worker_index=worker_index, seed=seed,
                         augment=augment, deterministic=deterministic, budget=budget)
    return Pipelines(
        splits=splits, train=train,
        validation=eval_stream(splits.validation, batch_size, num_workers, worker_index,
                               in_memory=in_memory["validation"], budget=budget),
        test=eval_stream(splits.test, batch_size, num_workers, worker_index,
                         in_memory=in_memory["test"], budget=budget),
        steps_per_epoch=steps_per_epoch(splits.num_train, batch_size),
        in_memory=in_memory)


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


def eval_stream(split: Split, global_batch: int, num_workers: int = 1,
                worker_index: int = 0, *, in_memory: bool = False,
                budget: Optional[memory.Budget] = None) -> tf.data.Dataset:
    """(images float32 [B, H, W, C], labels int64 [B], weights float32 [B])
    batches of exactly `global_batch`: this worker's share of the split with
    weight 1, then zero-weight padding, so that every worker's stream holds
    the same whole number of global batches.

    The padding examples are all-zero images with label 0; with K the most
    global batches any worker's share needs (at least 1), each worker pads
    its share to K * global_batch examples. Every example of the split thus
    comes once, on exactly one worker, and a weighted metric over the
    batches is exact on any number of replicas and workers
    (common/training/evaluation.py). In a cluster each worker takes
    global_batch / num_workers of its stream per step, so all of them step
    K * num_workers times.

    Args:
        split: the split.
        global_batch: the global batch, in examples.
        num_workers: the cluster's workers (at least 1 is used).
        worker_index: this worker's index.
        in_memory: cache the padded stream in memory after its first pass.
        budget: the memory budget (bounds tf.data's buffers), or None.

    Returns:
        tf.data.Dataset of (images float32 [B, H, W, C], labels int64 [B],
        weights float32 [B]), B = global_batch, K batches.
    """
    num_workers = max(1, num_workers)
    shares = [split.share_size(num_workers, w) for w in range(num_workers)]
    batches = max(1, max(math.ceil(n / global_batch) for n in shares))
    records = split.records(num_workers, worker_index)
    size = batches * global_batch  # by construction: whatever the reader yields
    if records is not None:  # parsed a batch at a time; the filler's index is -1
        records = records.concatenate(
            tf.data.Dataset.from_tensors(split.filler()).repeat()).take(size)
        if in_memory:
            records = records.cache()

        def parse(batch):
            images, labels, indices = split.parse_batch(batch)
            return (tf.cast(images, tf.float32), labels,
                    tf.cast(indices >= 0, tf.float32))

        ds = records.batch(global_batch, drop_remainder=True).map(
            parse, num_parallel_calls=EVAL_BATCHES_IN_FLIGHT)
        return ds.with_options(_options(True, None)).prefetch(EVAL_BATCHES_IN_FLIGHT)
    weighted = split.examples(num_workers, worker_index).map(
        lambda x, y: (x, y, tf.constant(1.0)))
    filler = tf.data.Dataset.from_tensors(
        (tf.zeros(split.image_shape, tf.uint8), tf.zeros([], tf.int64),
         tf.constant(0.0))).repeat()
    weighted = weighted.concatenate(filler).take(size)
    if in_memory:
        weighted = weighted.cache()
    ds = weighted.batch(global_batch, drop_remainder=True)
    ds = ds.map(lambda x, y, w: (tf.cast(x, tf.float32), y, w),
                num_parallel_calls=EVAL_BATCHES_IN_FLIGHT)
    return ds.with_options(_options(True, None)).prefetch(EVAL_BATCHES_IN_FLIGHT)


def batches(split: Split, batch_size: int = 256):
    """The whole split in batches of NumPy arrays, in order: what the TFLite
    and SavedModel scorers read (memory holds one batch).

    Args:
        split: the split.
        batch_size: examples per batch.

    Yields:
        (images uint8 [b, H, W, C], labels int64 [b]), b <= batch_size.
    """
    for images, labels in split.dataset().batch(batch_size).prefetch(1):
        yield images.numpy(), labels.numpy().astype(np.int64)


def first_image(split: Split) -> np.ndarray:
    """The split's first image, uint8 [H, W, C] (for latency measurements).

    Args:
        split: the split (not empty).

    Returns:
        uint8 [H, W, C].

    Raises:
        UserError: the split is empty.
    """
    for image, _ in split.dataset().take(1):
        return image.numpy()
    raise UserError(f"the {split.name} split is empty")
