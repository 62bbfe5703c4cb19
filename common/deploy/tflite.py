"""TFLite: converting Keras models, and measuring TFLite models (accuracy,
size, sparsity, latency).

The interpreter is LiteRT's (`ai_edge_litert`), the successor of the
deprecated `tf.lite.Interpreter`; where it is not installed, TensorFlow's.
Accuracy is computed with the interpreter over the whole test split, not with
the Keras model the file came from.
"""

import gzip
import io
import pathlib
import statistics
import time
from typing import Iterable, Optional

import numpy as np
import tensorflow as tf
import tf_keras

from common.training import evaluation, precision

try:
    from ai_edge_litert import interpreter as _litert
    INTERPRETER = "LiteRT (ai_edge_litert)"
except ImportError:  # pragma: no cover - LiteRT is in requirements.txt
    _litert = None
    INTERPRETER = "tf.lite.Interpreter"

# TFLite ops whose second input is a weight tensor that pruning can zero.
_WEIGHTED_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")


def to_tflite(model: tf_keras.Model, *, quantize: bool = False,
              integer_io: bool = False) -> bytes:
    """Converts a Keras model to TFLite, in float32 whatever its
    mixed-precision policy (a float32 copy is converted where needed).

    Args:
        model: the Keras model.
        quantize: apply tf.lite.Optimize.DEFAULT, which for a
            quantization-aware-trained model yields an int8 model from the
            learned ranges.
        integer_io: also make the model's input and output int8, removing
            the float<->int8 conversions at both ends.

    Returns:
        The .tflite file's contents (a FlatBuffer).
    """
    # A mixed-precision model converts as float32: TFLite has no bfloat16
    # kernels, and float16 belongs to its own post-training option.
    converter = tf.lite.TFLiteConverter.from_keras_model(precision.as_float32(model))
    if quantize:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if integer_io:
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
    return converter.convert()


def file_sizes(path: pathlib.Path) -> dict[str, int]:
    """Raw bytes and gzip bytes (what pruning's zeros buy on the wire).

    Args:
        path: the file.

    Returns:
        {"bytes": the file's size, "gzip_bytes": its size gzipped at
        level 9}, in bytes.
    """
    raw = pathlib.Path(path).read_bytes()
    return {"bytes": len(raw), "gzip_bytes": len(gzip.compress(raw, 9))}


def weights_sizes(model: tf_keras.Model) -> dict[str, int]:
    """Sizes of the model's weights alone (no optimizer state) as an
    uncompressed .npz, raw and gzipped.

    Args:
        model: the Keras model; all of model.weights (trainable and not)
            are counted.

    Returns:
        {"bytes": the .npz's size, "gzip_bytes": its size gzipped at
        level 9}, in bytes.
    """
    buffer = io.BytesIO()
    np.savez(buffer, *[w.numpy() for w in model.weights])
    raw = buffer.getvalue()
    return {"bytes": len(raw), "gzip_bytes": len(gzip.compress(raw, 9))}


def interpreter(path: pathlib.Path, threads: int = 1, xnnpack: bool = True):
    """An allocated interpreter for a TFLite file: LiteRT's where it is
    installed, else tf.lite.Interpreter.

    Args:
        path: the .tflite file.
        threads: the interpreter's num_threads.
        xnnpack: False: the built-in kernels only (no default delegates,
            XNNPACK among them).

    Returns:
        The interpreter, its tensors allocated.
    """
    module = _litert if _litert is not None else tf.lite
    kwargs = {"model_path": str(path), "num_threads": threads}
    if not xnnpack:
        resolver = (module.OpResolverType if _litert is not None
                    else tf.lite.experimental.OpResolverType)
        kwargs["experimental_op_resolver_type"] = resolver.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    instance = (_litert.Interpreter if _litert is not None else tf.lite.Interpreter)(**kwargs)
    instance.allocate_tensors()
    return instance


class TFLiteClassifier:
    """Runs one example at a time through a TFLite model, converting to and
    from int8 where the model's input or output is quantized.

    Args:
        path: the .tflite file.
        threads: the interpreter's num_threads.
        xnnpack: False: the built-in kernels only (see interpreter()).

    Attributes:
        interpreter: the allocated interpreter.
        input: the details (dict) of the model's first input tensor.
        output: the details (dict) of the model's first output tensor.
    """

    def __init__(self, path: pathlib.Path, threads: int = 1, xnnpack: bool = True):
        self.interpreter = interpreter(path, threads, xnnpack)
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]

    def prepare(self, image: np.ndarray) -> np.ndarray:
        """One image as the model's input: a batch of one, quantized with
        the input's scale and zero point where the input is int8.

        Args:
            image: [H, W, C], pixel values 0..255 as the Keras model the
                file was made from takes them; cast to float32.

        Returns:
            float32 [1, H, W, C], or int8 [1, H, W, C] for an int8 input
            (rounded, clipped to -128..127).
        """
        batch = image[np.newaxis].astype(np.float32)
        if self.input["dtype"] == np.int8:
            scale, zero_point = self.input["quantization"]
            batch = np.clip(np.round(batch / scale + zero_point), -128, 127).astype(np.int8)
        return batch

    def invoke(self, prepared: np.ndarray) -> np.ndarray:
        """Runs the model on one prepared input.

        Args:
            prepared: what prepare() returns: [1, H, W, C] in the input's
                dtype.

        Returns:
            The first output's one row, [num_classes]: logits for the
            models this project converts; dequantized to float32 with the
            output's scale and zero point where the output is int8.
        """
        self.interpreter.set_tensor(self.input["index"], prepared)
        self.interpreter.invoke()
        logits = self.interpreter.get_tensor(self.output["index"])[0]
        if self.output["dtype"] == np.int8:
            scale, zero_point = self.output["quantization"]
            logits = (logits.astype(np.float32) - zero_point) * scale
        return logits


def tflite_scores(path: pathlib.Path, batches: Iterable[tuple[np.ndarray, np.ndarray]]
                  ) -> dict:
    """Loss and top-1 accuracy of the TFLite model (logits out), one
    example at a time through the interpreter (one thread, XNNPACK).

    Args:
        path: the .tflite file.
        batches: (images uint8 [b, H, W, C] raw pixels at the model's input
            size, labels int [b]) batches, e.g. data.pipeline.batches(); one
            is held at a time.

    Returns:
        {"loss": mean cross-entropy of the logits (float64 math),
        "accuracy": top-1 fraction, "examples": N}; loss and accuracy are
        NaN when N is 0.
    """
    classifier = TFLiteClassifier(path)
    scores = evaluation.RunningScores(from_logits=True)
    for images, labels in batches:
        if len(images):
            scores.add(np.stack([classifier.invoke(classifier.prepare(image.astype(np.float32)))
                                 for image in images]), labels)
    return scores.result()


def tflite_weight_sparsity(path: pathlib.Path) -> Optional[float]:
    """Fraction of exact zeros in the weight tensors of the model's conv and
    fully-connected ops, read from the file (int8 zeros for a quantized
    model: its weights are symmetric, zero point 0).

    The weight tensor is the second input of each CONV_2D, DEPTHWISE_CONV_2D
    and FULLY_CONNECTED op; the file is opened without delegates, through
    the interpreter's private _get_ops_details().

    Args:
        path: the .tflite file.

    Returns:
        Zeros over all elements of those tensors, 0..1; None if the model
        has no such op.
    """
    instance = interpreter(path, xnnpack=False)
    zeros = total = 0
    for op in instance._get_ops_details():  # pylint: disable=protected-access
        if op["op_name"] in _WEIGHTED_OPS and len(op["inputs"]) > 1:
            weights = instance.get_tensor(op["inputs"][1])
            zeros += int(np.sum(weights == 0))
            total += weights.size
    return zeros / total if total else None


def latency_us(paths: dict[str, pathlib.Path], example: np.ndarray, *,
               threads: int = 1, xnnpack: bool = True, invocations: int = 500,
               rounds: int = 7, round_seconds: float = 1.0) -> dict[str, float]:
    """Median microseconds per example of each model, measured side by side:
    the models take turns round after round, so drift on a shared machine
    hits them alike. A round makes `invocations` calls per model, or as many
    as fit in about `round_seconds` (at least 3) where the model is slow (a
    VGG16's tens of milliseconds per call): LeNet-sized models make all 500.

    Each model is first warmed up (2 to 20 calls, which also time a call).
    A call is TFLiteClassifier.invoke(): setting the input, invoking, and
    reading (and, for int8, dequantizing) the output; one example, batch 1.

    Args:
        paths: the models to time, name -> .tflite file.
        example: [H, W, C], pixel values 0..255: the one input every call
            uses (prepared once per model, see TFLiteClassifier.prepare()).
        threads: each interpreter's num_threads.
        xnnpack: False: the built-in kernels only (see interpreter()).
        invocations: the most calls per model per round.
        rounds: how many rounds; each gives one sample per model.
        round_seconds: about how long a round of one model may take, in
            seconds.

    Returns:
        name -> the median over the rounds of a round's mean time per
        call, in microseconds.
    """
    classifiers = {name: TFLiteClassifier(path, threads, xnnpack)
                   for name, path in paths.items()}
    prepared = {name: c.prepare(example) for name, c in classifiers.items()}
    counts = {}
    for name, c in classifiers.items():  # warm-up, and how many calls fit a round
        start, calls = time.perf_counter(), 0
        while calls < 20 and (calls < 2 or time.perf_counter() - start < round_seconds):
            c.invoke(prepared[name])
            calls += 1
        per_call = (time.perf_counter() - start) / calls
        counts[name] = max(3, min(invocations, int(round_seconds / max(per_call, 1e-9))))
    samples: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(rounds):
        for name, c in classifiers.items():
            start = time.perf_counter()
            for _ in range(counts[name]):
                c.invoke(prepared[name])
            samples[name].append((time.perf_counter() - start) / counts[name] * 1e6)
    return {name: statistics.median(values) for name, values in samples.items()}
