"""Exact evaluation: every example scored once, on every strategy.

Keras' evaluate() hands a strategy the last, partial batch as it is; with
more replicas than examples left, a replica gets an empty batch and the
convolution fails ("input depth must be evenly divisible"), and on TPUs the
partial batch cannot be compiled at all. Here an evaluation split is padded
to whole global batches (times the workers of a cluster) with examples of
weight 0, and the model's loss and accuracy are summed with those weights
across replicas and workers: the figures are over exactly the real
examples, and `examples` says how many that was.
"""

import math
from typing import Optional

import numpy as np
import tensorflow as tf
import tf_keras


AUTOTUNE = tf.data.AUTOTUNE


def eval_dataset(split: tf.data.Dataset, num_examples: int, global_batch: int,
                 num_workers: int = 1) -> tf.data.Dataset:
    """(images float32 [B, H, W, C], labels int64 [B], weights float32 [B])
    batches of exactly `global_batch`: the split's examples with weight 1,
    then zero-weight padding up to a multiple of global_batch * num_workers.
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


class Evaluator:
    """Loss and accuracy of a classifier (logits out) over eval_dataset()
    batches, under the strategy the model was built in."""

    def __init__(self, model: tf_keras.Model, strategy: tf.distribute.Strategy):
        self.model = model
        self.strategy = strategy
        self._loops: dict[int, tuple] = {}

    def _loop(self, dataset: tf.data.Dataset):
        key = id(dataset)
        if key not in self._loops:
            distributed = self.strategy.experimental_distribute_dataset(dataset)
            model, strategy = self.model, self.strategy

            def step(images, labels, weights):
                logits = tf.cast(model(images, training=False), tf.float32)
                losses = tf_keras.losses.sparse_categorical_crossentropy(
                    labels, logits, from_logits=True)
                predicted = tf.argmax(logits, axis=-1, output_type=labels.dtype)
                correct = tf.cast(tf.equal(predicted, labels), tf.float32)
                return tf.stack([tf.reduce_sum(losses * weights),
                                 tf.reduce_sum(correct * weights), tf.reduce_sum(weights)])

            @tf.function
            def loop():
                total = tf.zeros([3])
                for images, labels, weights in distributed:
                    per_replica = strategy.run(step, args=(images, labels, weights))
                    total += strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica,
                                             axis=None)
                return total

            # Keep the dataset alive with its loop, so its id stays unique.
            self._loops[key] = (loop, dataset)
        return self._loops[key][0]

    def __call__(self, dataset: tf.data.Dataset) -> dict:
        """{"loss": mean cross-entropy, "accuracy": top-1, "examples": count}."""
        loss, correct, count = (float(v) for v in self._loop(dataset)().numpy())
        count = int(round(count))
        if count == 0:
            return {"loss": math.nan, "accuracy": math.nan, "examples": 0}
        return {"loss": loss / count, "accuracy": correct / count, "examples": count}


def scores_from_probabilities(probabilities: np.ndarray, labels: np.ndarray,
                              from_logits: bool = False) -> dict:
    """Loss (cross-entropy) and accuracy of [N, classes] outputs against
    int labels [N], computed in float64."""
    outputs = np.asarray(probabilities, np.float64)
    if from_logits:
        outputs = outputs - outputs.max(axis=1, keepdims=True)
        log_p = outputs - np.log(np.exp(outputs).sum(axis=1, keepdims=True))
    else:
        log_p = np.log(np.clip(outputs, 1e-12, 1.0))
    labels = np.asarray(labels, np.int64)
    count = len(labels)
    if count == 0:
        return {"loss": math.nan, "accuracy": math.nan, "examples": 0}
    return {"loss": float(-log_p[np.arange(count), labels].mean()),
            "accuracy": float((outputs.argmax(axis=1) == labels).mean()),
            "examples": count}


def split_arrays(split: tf.data.Dataset, limit: Optional[int] = None
                 ) -> tuple[np.ndarray, np.ndarray]:
    """A split as NumPy arrays (images uint8 [N, H, W, C], labels int64 [N])."""
    ds = split.take(limit) if limit else split
    images, labels = [], []
    for image, label in ds.batch(1024):
        images.append(image.numpy())
        labels.append(label.numpy())
    if not images:
        shape = tuple(split.element_spec[0].shape)
        return np.zeros((0,) + shape, np.uint8), np.zeros((0,), np.int64)
    return np.concatenate(images), np.concatenate(labels).astype(np.int64)
