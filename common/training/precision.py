"""Numeric precision: the mixed-precision policy, checked against the
hardware, and float32 copies of models for what only runs in float32.

mixed_precision is a hyperparameter like the other speed levers
(steps_per_execution and jit_compile, which training/optimizers.py passes
to compile()): declared in common.config.hparams.SHARED, so it lands in
config.json and the HParams dashboard; an experiment may choose its own
default, measured with bench/levers.py.
"""

import contextlib
import pathlib
import platform

from absl import logging
import tensorflow as tf
import tf_keras

from common.errors import UserError


def cpu_has_bfloat16() -> bool:
    """Whether this CPU computes bfloat16 natively, by the kernel's CPU flags.

    Read from /proc/cpuinfo: AVX512-BF16 or AMX (avx512_bf16, amx_bf16) on
    x86, BF16 (bf16) on Arm.

    Returns:
        Whether a flags or Features line names one of them; without
        /proc/cpuinfo, whether the machine is arm64 (Apple silicon has
        BF16).
    """
    try:
        text = pathlib.Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.machine() == "arm64"  # Apple silicon has BF16
    flags = set()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            flags.update(line.split(":", 1)[1].split())
    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})


def check_hardware(config: dict) -> None:
    """Refuses a precision this machine would only run slower.

    The values themselves are checked with the other hyperparameters.

    Args:
        config: the run's hyperparameters (mixed_precision).

    Raises:
        UserError: mixed_bfloat16 without a GPU or TPU on a CPU without
            bfloat16 (cpu_has_bfloat16), or mixed_float16 without a GPU.
    """
    policy = config["mixed_precision"]
    accelerators = (tf.config.list_physical_devices("GPU")
                    or tf.config.list_logical_devices("TPU"))
    if policy == "mixed_bfloat16" and not accelerators and not cpu_has_bfloat16():
        raise UserError("mixed_bfloat16 asked for, but this CPU has no bfloat16 support "
                        "(no avx512_bf16 or amx_bf16): it would only run slower; use "
                        "mixed_precision=float32")
    if policy == "mixed_float16" and not tf.config.list_physical_devices("GPU"):
        raise UserError("mixed_float16 needs a GPU to be faster; on this machine's CPU it "
                        "would only run slower (use mixed_bfloat16 where the CPU has "
                        "bfloat16, or float32)")


@contextlib.contextmanager
def precision(config: dict):
    """Sets the Keras mixed-precision policy for building and training.

    The global policy set before is restored afterwards. Under
    mixed_float16, tf_keras' compile wraps the optimizer in a
    LossScaleOptimizer by itself.

    Args:
        config: the run's hyperparameters (mixed_precision, one of
            common.config.choices.PRECISIONS).

    Yields:
        Nothing; the policy holds inside the with block.
    """
    policy = config["mixed_precision"]
    previous = tf_keras.mixed_precision.global_policy().name
    tf_keras.mixed_precision.set_global_policy(policy)
    if policy != "float32":
        logging.info("Mixed precision: %s (variables float32, classifier output float32)",
                     policy)
    try:
        yield
    finally:
        tf_keras.mixed_precision.set_global_policy(previous)


def _policies(model: tf_keras.Model) -> set[str]:
    names = set()
    for layer in model.layers:
        if isinstance(layer, tf_keras.Model):
            names |= _policies(layer)
        else:
            names.add(layer.dtype_policy.name)
    return names


def as_float32(model: tf_keras.Model) -> tf_keras.Model:
    """`model` in float32: itself if every layer is, else a float32 copy.

    The copy (tf_keras.models.clone_model) rebuilds each layer from its
    config with dtype "float32", nested models' too, and takes the model's
    weights. Compression (pruning, quantization-aware training) only runs
    in float32, so a model trained under mixed_bfloat16 or mixed_float16 is
    converted on entry.

    Args:
        model: a Keras model.

    Returns:
        `model` itself when every layer's dtype policy is float32; else the
        copy, with the same weights.
    """
    if _policies(model) <= {"float32"}:
        return model

    def clone(layer):
        if isinstance(layer, tf_keras.Model):
            return as_float32(layer)
        return layer.__class__.from_config({**layer.get_config(), "dtype": "float32"})

    copy = tf_keras.models.clone_model(model, clone_function=clone)
    copy.set_weights(model.get_weights())
    return copy
