"""The model to compress (the base experiment's), and the TFMOT wrappers."""

import tensorflow_model_optimization as tfmot
import tf_keras
from tensorflow_model_optimization.python.core.quantization.keras.default_8bit import (
    default_8bit_quantize_configs, default_8bit_quantize_registry)

import experiments
from common.errors import UserError

# Layers whose kernels are pruned: the ones that hold nearly all weights.
PRUNED_LAYERS = (tf_keras.layers.Conv2D, tf_keras.layers.Dense,
                 tf_keras.layers.DepthwiseConv2D)
OutputQuantizeConfig = default_8bit_quantize_configs.Default8BitOutputQuantizeConfig


def base_experiment(config: dict):
    name = config["base_experiment"]
    if name == "pruning_qat":
        raise UserError("base_experiment cannot be pruning_qat itself")
    return experiments.get(name)


def build_model(config: dict, image_shape: tuple[int, ...],
                num_classes: int) -> tf_keras.Model:
    """The base experiment's model, built with its own defaults plus any of
    its hyperparameters this experiment also sets (dropout)."""
    base = base_experiment(config)
    base_config = {**base.get_config(),
                   **{k: v for k, v in config.items() if k in base.get_config()}}
    return base.build_model(base_config, image_shape, num_classes)


def pruning_schedule(config: dict, steps: int):
    begin, frequency = config["pruning_begin_step"], config["pruning_frequency"]
    end = config["pruning_end_step"]
    if end < 0:
        # 70% into the stage, on a pruning step: TFMOT prunes only every
        # `frequency` steps, so an end between two of them never reaches
        # final_sparsity exactly. The rest of the stage lets accuracy recover.
        end = begin + max(1, (int(steps * 0.7) - begin) // frequency) * frequency
    if not 0 <= config["initial_sparsity"] <= config["final_sparsity"] < 1:
        raise UserError(f"need 0 <= initial_sparsity <= final_sparsity < 1, got "
                        f"{config['initial_sparsity']} and {config['final_sparsity']}")
    return tfmot.sparsity.keras.PolynomialDecay(
        initial_sparsity=config["initial_sparsity"],
        final_sparsity=config["final_sparsity"],
        begin_step=begin, end_step=end, frequency=frequency)


def prune(model: tf_keras.Model, schedule) -> tf_keras.Model:
    """Wraps the conv and dense layers in prune_low_magnitude (the TFMOT
    guide's per-layer route: preprocessing layers such as Rescaling are not
    prunable, so the whole-model call would reject LeNet-5)."""
    def wrap(layer):
        if isinstance(layer, PRUNED_LAYERS):
            return tfmot.sparsity.keras.prune_low_magnitude(layer, pruning_schedule=schedule)
        return layer
    return tf_keras.models.clone_model(model, clone_function=wrap)


def quantize_preserving_sparsity(stripped: tf_keras.Model) -> tf_keras.Model:
    """Pruning-preserving QAT model of a stripped pruned model.

    Layers the default 8-bit registry cannot quantize (Rescaling) get an
    output-only config: the prune-preserve registry claims to support them
    and then fails, left unannotated they break quantize_apply, and with a
    no-op config the converter gives the rescaled tensor the input's range
    (0..255 instead of 0..1) and the int8 model predicts at chance.
    """
    registry = default_8bit_quantize_registry.Default8BitQuantizeRegistry()

    def annotate(layer):
        if isinstance(layer, tf_keras.layers.InputLayer):
            return layer
        config = None if registry.supports(layer) else OutputQuantizeConfig()
        return tfmot.quantization.keras.quantize_annotate_layer(layer, config)

    annotated = tf_keras.models.clone_model(stripped, clone_function=annotate)
    with quantize_scope():
        return tfmot.quantization.keras.quantize_apply(
            annotated, tfmot.experimental.combine.Default8BitPrunePreserveQuantizeScheme())


def quantize_scope():
    """What loading or cloning a QAT model needs in scope."""
    return tfmot.quantization.keras.quantize_scope(
        {"Default8BitOutputQuantizeConfig": OutputQuantizeConfig})


def kernel_sparsity(model: tf_keras.Model) -> float:
    """Fraction of exact zeros over the kernels of the pruned layer types,
    wherever they sit (plain, pruning-wrapped or quantize-wrapped)."""
    zeros = total = 0
    for weight in model.weights:
        name = weight.name.split("/")[-1]
        if name.startswith(("kernel", "depthwise_kernel")) and len(weight.shape) >= 2:
            values = weight.numpy()
            zeros += int((values == 0).sum())
            total += values.size
    return zeros / total if total else 0.0
