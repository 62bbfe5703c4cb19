"""Exact evaluation: every example scored once, on every strategy.

Keras' evaluate() hands a strategy the last, partial batch as it is; with
more replicas than examples left, a replica gets an empty batch and the
convolution fails ("input depth must be evenly divisible"), and on TPUs the
partial batch cannot be compiled at all. data/pipeline.py's eval_dataset
pads an evaluation split to whole global batches (times the workers of a
cluster) with examples of weight 0, and the model's loss and accuracy are summed with those weights
across replicas and workers: the figures are over exactly the real
examples, and `examples` says how many that was.
"""

import math

import numpy as np
import tensorflow as tf
import tf_keras


class Evaluator:
    """Loss and accuracy of a classifier (logits out) over eval_dataset() batches.

    Runs under the strategy the model was built in: each replica sums its
    examples' weighted cross-entropy, correct predictions and weights, and
    the sums are added up across replicas and workers. The loop for a
    dataset is traced once (tf.function) and kept with the dataset.

    Args:
        model: the classifier; its outputs are logits [B, classes].
        strategy: the strategy `model` was built under.
    """

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
        """Scores the model over every real example of `dataset`.

        Args:
            dataset: eval_dataset() batches: (images float32 [B, H, W, C],
                labels int [B], weights float32 [B]), padding of weight 0.

        Returns:
            {"loss": mean cross-entropy (float), "accuracy": top-1 (float),
            "examples": the count of real examples, the sum of the weights
            (int)}; loss and accuracy are NaN when there are none.
        """
        loss, correct, count = (float(v) for v in self._loop(dataset)().numpy())
        count = int(round(count))
        if count == 0:
            return {"loss": math.nan, "accuracy": math.nan, "examples": 0}
        return {"loss": loss / count, "accuracy": correct / count, "examples": count}


class RunningScores:
    """Loss and accuracy summed batch by batch (memory holds one batch):
    what scores_from_probabilities() gives over all the batches at once.

    Args:
        from_logits: whether the outputs added are logits (else
            probabilities).
    """

    def __init__(self, from_logits: bool = False):
        self.from_logits = from_logits
        self.loss_sum, self.correct, self.count = 0.0, 0, 0

    def add(self, outputs: np.ndarray, labels: np.ndarray) -> None:
        """Adds one batch.

        Args:
            outputs: [b, classes] probabilities or logits.
            labels: int class indices, [b].
        """
        scores = scores_from_probabilities(outputs, labels, self.from_logits)
        if scores["examples"]:
            self.loss_sum += scores["loss"] * scores["examples"]
            self.correct += int(round(scores["accuracy"] * scores["examples"]))
            self.count += scores["examples"]

    def result(self) -> dict:
        """The scores over every batch added.

        Returns:
            {"loss": mean cross-entropy, "accuracy": top-1 fraction,
            "examples"}; loss and accuracy NaN when there were none.
        """
        if self.count == 0:
            return {"loss": math.nan, "accuracy": math.nan, "examples": 0}
        return {"loss": self.loss_sum / self.count, "accuracy": self.correct / self.count,
                "examples": self.count}


def scores_from_probabilities(probabilities: np.ndarray, labels: np.ndarray,
                              from_logits: bool = False) -> dict:
    """Loss (cross-entropy) and accuracy of [N, classes] outputs against labels.

    Computed in float64 with NumPy. Probabilities are clipped to
    [1e-12, 1] before the log; logits go through a log-softmax.

    Args:
        probabilities: model outputs, [N, classes]: probabilities, or
            logits with `from_logits`.
        labels: int class indices, [N].
        from_logits: whether `probabilities` are logits.

    Returns:
        {"loss": mean cross-entropy (float), "accuracy": top-1 (float),
        "examples": N}; loss and accuracy are NaN when N is 0.
    """
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
