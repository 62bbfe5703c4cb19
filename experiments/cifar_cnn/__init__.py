"""The small CNN of TensorFlow's CIFAR-10 tutorial: Conv 32 3x3, pool,
Conv 64 3x3, pool, Conv 64 3x3, Dense 64, Dense 10 (Adam, 10 epochs there).

Run (CIFAR-10 through TFDS, needs internet once; or --data_dir with its
binary version):
    .venv/bin/python launch.py --experiment=cifar_cnn
Offline, on real Fashion-MNIST (Debian's dataset-fashion-mnist):
    .venv/bin/python launch.py --experiment=cifar_cnn --dataset=fashion_mnist --epochs=5

Expected: Fashion-MNIST, 5 epochs: test accuracy about 0.89 to 0.91 (the
published band for such models); 0.8997 measured 2026-12-01 (the README's
Results). On CIFAR-10 the tutorial reports a test loss of 0.659 (about 0.70
accuracy); CIFAR-10 cannot be downloaded on the machine these figures come
from. It builds from the data's image shape, so 28x28 grey images run too.
"""

import tf_keras
from tf_keras import layers

from common.config.hparams import HParam
from common.errors import UserError


def get_config() -> dict:
    return {
        "dataset": "cifar10",
        "batch_size": 64,
        "epochs": 10,
        "optimizer": "adam",
        "learning_rate": 1e-3,   # Keras' Adam default, as in the tutorial
        "dense_units": HParam(64, ge=1),
        "dropout": HParam(0.0, ge=0, lt=1, help="before the dense layers"),
        "steps_per_execution": 32,
        "image_size": 32,             # --dataset=image_folder: resized to this
        "image_channels": 3,          # and to RGB
    }


def search_space(hp) -> None:
    """What a Keras Tuner sweep explores (`--mode=tune`)."""
    hp.Choice("dense_units", [64, 128, 256])
    hp.Float("learning_rate", 3e-4, 3e-3, sampling="log")
    hp.Float("dropout", 0.0, 0.5, step=0.25)


def build_model(config: dict, image_shape: tuple[int, ...],
                num_classes: int) -> tf_keras.Model:
    """Raw pixels (0..255) [H, W, C] in, logits [num_classes] out. The
    tutorial's three valid convolutions and two poolings need at least
    18x18 pixels: smaller images are a UserError."""
    if min(image_shape[:2]) < 18:
        raise UserError(f"cifar_cnn needs images of at least 18x18 pixels, got "
                        f"{image_shape[0]}x{image_shape[1]} (image folders: raise image_size)")
    inputs = tf_keras.Input(shape=image_shape, name="image")
    x = layers.Rescaling(1.0 / 255)(inputs)
    x = layers.Conv2D(32, 3, activation="relu", name="conv1")(x)
    x = layers.MaxPooling2D(2, name="pool1")(x)
    x = layers.Conv2D(64, 3, activation="relu", name="conv2")(x)
    x = layers.MaxPooling2D(2, name="pool2")(x)
    x = layers.Conv2D(64, 3, activation="relu", name="conv3")(x)
    x = layers.Flatten()(x)
    if config["dropout"]:
        x = layers.Dropout(config["dropout"])(x)
    x = layers.Dense(config["dense_units"], activation="relu", name="dense")(x)
    # float32 logits under mixed precision too: a stable softmax and loss.
    outputs = layers.Dense(num_classes, name="logits", dtype="float32")(x)
    return tf_keras.Model(inputs, outputs, name="cifar_cnn")
