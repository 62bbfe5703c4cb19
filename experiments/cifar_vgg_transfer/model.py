"""VGG16 base (ImageNet, none, or a local weights file) with a new head."""

import pathlib

import numpy as np
import tf_keras
from tf_keras import layers

from common.data import pipeline, sources
from common.errors import UserError
from common.training.stages import Stage

WEIGHTS_FILE = "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"
BASE_NAME = "vgg16"
# VGG16's layers below its input, in order (include_top=False).
VGG16_LAYERS = tuple(
    f"block{block}_{kind}"
    for block, convs in ((1, 2), (2, 2), (3, 3), (4, 3), (5, 3))
    for kind in [f"conv{i}" for i in range(1, convs + 1)] + ["pool"])


def _imagenet_base(input_shape) -> tf_keras.Model:
    cached = pathlib.Path("~/.keras/models").expanduser()
    if not (cached / WEIGHTS_FILE).exists() and not sources.network_available():
        raise UserError(_no_download_message("no network"))
    try:
        return tf_keras.applications.VGG16(include_top=False, weights="imagenet",
                                           input_shape=input_shape)
    except Exception as e:  # get_file raises a bare Exception on URL failures.
        if "URL fetch failure" not in str(e):
            raise
        raise UserError(_no_download_message(str(e).splitlines()[0])) from None


def _no_download_message(reason: str) -> str:
    return (f"cannot download the ImageNet VGG16 weights ({reason}); pass "
            f"--weights=PATH with the local path of {WEIGHTS_FILE}")


def vgg16_base(weights: str, input_shape) -> tf_keras.Model:
    """VGG16 without its top: `imagenet`, `none` (random) or an h5 path."""
    if weights == "imagenet":
        return _imagenet_base(input_shape)
    base = tf_keras.applications.VGG16(include_top=False, weights=None,
                                       input_shape=input_shape)
    if weights == "none":
        return base
    path = pathlib.Path(weights).expanduser()
    if not path.is_file():
        raise UserError(f"--weights file {weights} does not exist (expected imagenet, "
                        f"none, or the path of {WEIGHTS_FILE})")
    try:
        base.load_weights(str(path))
    except (ValueError, OSError) as e:
        raise UserError(f"cannot load VGG16 weights from {path}: "
                        f"{str(e).splitlines()[0]}") from None
    return base


# VGG16's "caffe" preprocessing: RGB to BGR, minus the ImageNet channel means.
_BGR_MEAN = (103.939, 116.779, 123.68)


def vgg16_preprocessing() -> layers.Layer:
    """tf_keras.applications.vgg16.preprocess_input as one built-in layer: a
    fixed 1x1 convolution whose kernel swaps R and B and whose bias subtracts
    the means. Unlike preprocess_input's ops, it saves and loads with the
    model."""
    swap = np.zeros((1, 1, 3, 3), np.float32)
    for rgb in range(3):
        swap[0, 0, rgb, 2 - rgb] = 1.0
    return layers.Conv2D(
        3, 1, name="vgg16_preprocess", trainable=False,
        # A list, not the array: HDF5 (pruning_qat's QAT model) cannot
        # read a NumPy value back from a layer's config.
        kernel_initializer=tf_keras.initializers.Constant(swap.tolist()),
        bias_initializer=tf_keras.initializers.Constant([-m for m in _BGR_MEAN]))


def build_model(config: dict, image_shape: tuple[int, ...],
                num_classes: int) -> tf_keras.Model:
    """Raw images in, logits out; VGG16's own preprocessing inside the model.

    The base starts frozen and is called with training=False, as in the Keras
    transfer-learning guide; phase 2 unfreezes its top.
    """
    size = config["input_size"]
    base = vgg16_base(config["weights"], (size, size, 3))
    base._name = BASE_NAME
    base.trainable = False

    inputs = tf_keras.Input(shape=image_shape, name="image")
    x = inputs
    if image_shape[-1] == 1:  # grey-scale data through an RGB base
        x = layers.Concatenate(name="grey_to_rgb")([x, x, x])
    if tuple(image_shape[:2]) != (size, size):
        x = layers.Resizing(size, size, name="upsample")(x)
    x = vgg16_preprocessing()(x)
    x = base(x, training=False)
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    x = layers.Dense(config["head_units"], activation="relu", name="head_dense")(x)
    x = layers.Dropout(config["head_dropout"], name="head_dropout")(x)
    # float32 logits under mixed precision too: a stable softmax and loss.
    outputs = layers.Dense(num_classes, name="logits", dtype="float32")(x)
    return tf_keras.Model(inputs, outputs, name="vgg16_transfer")


def unfreeze(model: tf_keras.Model, context) -> tf_keras.Model:
    """Makes the base trainable from `unfreeze_from` up; the layers below stay
    frozen (phase 2's on_start)."""
    base = model.get_layer(BASE_NAME)
    names = [layer.name for layer in base.layers]
    start = names.index(context.config["unfreeze_from"])
    base.trainable = True
    for position, layer in enumerate(base.layers):
        layer.trainable = position >= start
    return model


def stages(config: dict) -> list[Stage]:
    """Phase 1 trains the head on the frozen base; phase 2 fine-tunes from
    unfreeze_from at a low rate (the Keras transfer-learning guide)."""
    return [
        Stage("phase1_head", config["phase1_epochs"], config["phase1_learning_rate"]),
        Stage("phase2_finetune", config["phase2_epochs"], config["phase2_learning_rate"],
              on_start=unfreeze),
    ]


def augment(image, label, config: dict):
    """Training-only augmentation, run inside the tf.data pipeline."""
    if not config["augment"]:
        return image, label
    return pipeline.pad_crop_flip(image, label, config["augment_pad"])
