"""The model to compress (the base experiment's, or a finished run's) and
the TFMOT transformations: flatten, prune, strip, quantize."""

import pathlib

from absl import logging
import tensorflow as tf
import tensorflow_model_optimization as tfmot
import tf_keras
from tensorflow_model_optimization.python.core.quantization.keras.default_8bit import (
    default_8bit_quantize_configs, default_8bit_quantize_registry)

import experiments
from common.config import hparams
from common.errors import UserError
from common.runs import saved

# Layers whose kernels are pruned: the ones that hold nearly all weights.
PRUNED_LAYERS = (tf_keras.layers.Conv2D, tf_keras.layers.Dense,
                 tf_keras.layers.DepthwiseConv2D)
OutputQuantizeConfig = default_8bit_quantize_configs.Default8BitOutputQuantizeConfig


def base_experiment(config: dict):
    name = config["base_experiment"]
    if name == __name__.split(".")[1]:
        raise UserError(f"base_experiment cannot be {name} itself")
    return experiments.get(name)


def init_run(config: dict) -> pathlib.Path:
    """The finished run --init_from names, checked: finished, a Keras model,
    trained on this run's dataset. Raises UserError."""
    path = pathlib.Path(config["init_from"]).expanduser()
    if not path.is_dir():
        raise UserError(f"--init_from={config['init_from']} is not a run folder")
    saved.finished(path)
    trained_on = saved.read_config(path)["hparams"].get("dataset")
    if trained_on and trained_on != config["dataset"]:
        raise UserError(f"--init_from={config['init_from']} was trained on {trained_on!r} "
                        f"but this run uses {config['dataset']!r}; pass --dataset={trained_on}")
    return path


def build_model(config: dict, image_shape: tuple[int, ...],
                num_classes: int) -> tf_keras.Model:
    """The model of --init_from's run, or the base experiment's model built
    with its own defaults plus any of its hyperparameters this experiment
    also has (dropout, weights, ...)."""
    if config["init_from"]:
        model = saved.load_keras_model(init_run(config), scope=quantize_scope)
        if tuple(model.input_shape[1:]) != tuple(image_shape) \
                or model.output_shape[-1] != num_classes:
            raise UserError(f"--init_from={config['init_from']} takes {model.input_shape[1:]} "
                            f"images into {model.output_shape[-1]} classes; this data has "
                            f"{tuple(image_shape)} and {num_classes}")
        logging.info("Baseline: the model of %s (no training)", config["init_from"])
        return model
    base = base_experiment(config)
    defaults = hparams.defaults(base.get_config())
    base_config = {**defaults, **{k: v for k, v in config.items() if k in defaults}}
    return base.build_model(base_config, image_shape, num_classes)


def flatten(model: tf_keras.Model) -> tf_keras.Model:
    """`model` with nested functional models (a VGG16 base) inlined, so that
    TFMOT's per-layer wrappers reach every layer; the layers (and weights)
    are the same objects."""
    if not any(isinstance(layer, tf_keras.Model) for layer in model.layers):
        return model
    inputs = [tf_keras.Input(shape=t.shape[1:], dtype=t.dtype, name=t.name.split(":")[0])
              for t in model.inputs]
    outputs = _call_layers(model, inputs)
    return tf_keras.Model(inputs, outputs, name=model.name)


def _call_layers(model: tf_keras.Model, inputs: list):
    """Calls a functional model's layers one by one on `inputs`, in graph
    order; nested functional models are called layer by layer too."""
    produced = {id(t): new for t, new in zip(model.inputs, inputs)}
    for depth in sorted(model._nodes_by_depth, reverse=True):  # pylint: disable=protected-access
        for node in model._nodes_by_depth[depth]:  # pylint: disable=protected-access
            layer = node.layer
            if isinstance(layer, tf_keras.layers.InputLayer):
                continue
            args, kwargs = tf.nest.map_structure(
                lambda t: produced.get(id(t), t), (node.call_args, node.call_kwargs))
            if isinstance(layer, tf_keras.Model):
                outputs = _call_layers(layer, tf.nest.flatten(args))
            else:
                outputs = layer(*args, **kwargs)
            for old, new in zip(tf.nest.flatten(node.outputs), tf.nest.flatten(outputs)):
                produced[id(old)] = new
    outputs = [produced[id(t)] for t in model.outputs]
    return outputs[0] if len(outputs) == 1 else outputs


def pruning_schedule(config: dict, steps: int, describe: str = "") -> tuple[object, str]:
    """PolynomialDecay from initial_sparsity to final_sparsity over the
    pruning stage's `steps` training steps; returns it and a note (empty
    unless the frequency had to be lowered to fit the stage).

    TFMOT prunes at steps begin + k * frequency up to end_step, so the
    final sparsity is reached only if such a step exists inside the stage:
    with pruning_end_step=-1 the end is put 70% into the stage on a pruning
    step (the frequency lowered for a stage too short for it); an explicit
    end past the stage, before the begin, or off the frequency's grid is a
    UserError naming the numbers.
    """
    begin, frequency, end = (config["pruning_begin_step"], config["pruning_frequency"],
                             config["pruning_end_step"])
    initial, final = config["initial_sparsity"], config["final_sparsity"]
    if not initial <= final:
        raise UserError(f"initial_sparsity={initial} is above final_sparsity={final}")
    if steps - begin < 2:
        raise UserError(f"the pruning stage has {steps} training steps{describe}; "
                        f"pruning_begin_step={begin} leaves fewer than 2 to prune in: train "
                        "longer (pruning_epochs), use a smaller batch or an earlier begin")
    note = ""
    if end < 0:
        span = max(1, int((steps - begin) * 0.7))
        if frequency > span:
            note = (f"pruning every {span} steps instead of pruning_frequency={frequency}: "
                    f"the pruning stage has only {steps} steps{describe}")
            frequency = span
        end = begin + span // frequency * frequency
    elif end <= begin:
        raise UserError(f"pruning_end_step={end} must come after pruning_begin_step={begin}")
    elif end >= steps:
        raise UserError(f"pruning_end_step={end} is past the pruning stage's last step "
                        f"({steps - 1}; {steps} steps{describe}); use -1 to fit it")
    elif (end - begin) % frequency:
        raise UserError(f"pruning_end_step={end} is not on a pruning step (begin {begin} "
                        f"+ a multiple of pruning_frequency={frequency}): final sparsity "
                        "would never be reached")
    schedule = tfmot.sparsity.keras.PolynomialDecay(
        initial_sparsity=initial, final_sparsity=final, begin_step=begin, end_step=end,
        frequency=frequency)
    return schedule, note


def prunable(layer, min_weights: int) -> bool:
    """Whether `layer` is pruned: a conv or dense layer whose kernel holds
    at least `min_weights` weights (smaller ones are fixed transforms, such
    as a colour-channel swap, or too small to matter)."""
    return isinstance(layer, PRUNED_LAYERS) and layer.weights \
        and layer.weights[0].shape.num_elements() >= min_weights


def prune(model: tf_keras.Model, schedule, min_weights: int = 0) -> tf_keras.Model:
    """Wraps the prunable conv and dense layers in prune_low_magnitude (the
    TFMOT guide's per-layer route: preprocessing layers such as Rescaling are
    not prunable, so the whole-model call would reject LeNet-5). Every
    pruned layer is trained, a frozen transfer base's too: compression
    fine-tunes the whole model, and TFMOT's prune-preserving QAT keeps the
    zeros of trainable kernels only."""
    def wrap(layer):
        if prunable(layer, min_weights):
            layer.trainable = True
            return tfmot.sparsity.keras.prune_low_magnitude(layer, pruning_schedule=schedule)
        return layer
    return tf_keras.models.clone_model(flatten(model), clone_function=wrap)


def quantize_preserving_sparsity(stripped: tf_keras.Model) -> tf_keras.Model:
    """Pruning-preserving QAT model of a stripped pruned model.

    Layers the default 8-bit registry cannot quantize (Rescaling, Resizing)
    get an output-only config: the prune-preserve registry claims to support
    them and then fails, left unannotated they break quantize_apply, and with
    a no-op config the converter gives the rescaled tensor the input's range
    (0..255 instead of 0..1) and the int8 model predicts at chance.
    """
    registry = default_8bit_quantize_registry.Default8BitQuantizeRegistry()

    def annotate(layer):
        if isinstance(layer, tf_keras.layers.InputLayer):
            return layer
        config = None if registry.supports(layer) else OutputQuantizeConfig()
        return tfmot.quantization.keras.quantize_annotate_layer(layer, config)

    flat = flatten(stripped)
    _listed_constants(flat)
    # quantize_apply rebuilds the model from its layers' weights in model
    # order, which puts frozen layers' weights last; and the prune-preserving
    # quantizer masks trainable kernels only. Both want every layer trainable.
    for layer in flat.layers:
        layer.trainable = True
    annotated = tf_keras.models.clone_model(flat, clone_function=annotate)
    with quantize_scope():
        quantized = tfmot.quantization.keras.quantize_apply(
            annotated, tfmot.experimental.combine.Default8BitPrunePreserveQuantizeScheme())
    return quantized


def _listed_constants(model: tf_keras.Model) -> None:
    """Turns Constant initializers that hold a NumPy array (VGG16's
    preprocessing kernel, in runs made before it was a list) into nested
    lists: the HDF5 file the QAT model is kept in cannot read a NumPy value
    back ("Unknown object: '__numpy__'")."""
    for layer in model.layers:
        for name in ("kernel_initializer", "bias_initializer"):
            initializer = getattr(layer, name, None)
            if isinstance(initializer, tf_keras.initializers.Constant) and hasattr(
                    initializer.value, "tolist"):
                initializer.value = initializer.value.tolist()


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

