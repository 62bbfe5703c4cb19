"""A multilayer perceptron: the first rung of the ladder (Flatten, Dense 128
ReLU, Dense 10; Adam; batch 64; 5 epochs).

Run (offline, real Fashion-MNIST from Debian's dataset-fashion-mnist):
    .venv/bin/python launch.py --experiment=mnist_mlp --dataset=fashion_mnist --epochs=5

Expected: Fashion-MNIST, 5 epochs: test accuracy about 0.87 to 0.89 (the
published band for such models); 0.8704 measured 2026-12-01 (the README's
Results). On MNIST the textbook version reports 0.9872; MNIST cannot be
downloaded on the machine these figures come from. It builds from the
data's image shape, so any dataset runs (CIFAR-10, image folders).
"""

import tf_keras
from tf_keras import layers

from common.config.hparams import HParam


def get_config() -> dict:
    return {
        "dataset": "mnist",
        "batch_size": 64,
        "epochs": 5,
        "optimizer": "adam",
        "learning_rate": 1e-3,   # Keras' Adam default, as in the textbook
        "hidden_units": HParam(128, ge=1),
        "dropout": HParam(0.0, ge=0, lt=1, help="after the hidden layer"),
        # Small dense steps: many per call into the graph, as for LeNet-5.
        "steps_per_execution": 128,
        "image_size": 28,             # --dataset=image_folder: resized to this
        "image_channels": 1,          # and to grey
    }


def search_space(hp) -> None:
    """What a Keras Tuner sweep explores (`--mode=tune`)."""
    hp.Choice("hidden_units", [64, 128, 256, 512])
    hp.Float("learning_rate", 3e-4, 3e-3, sampling="log")
    hp.Float("dropout", 0.0, 0.4, step=0.1)


def build_model(config: dict, image_shape: tuple[int, ...],
                num_classes: int) -> tf_keras.Model:
    """Raw pixels (0..255) [H, W, C] in, logits [num_classes] out:
    Rescaling, Flatten, Dense(hidden_units, ReLU), Dropout, Dense."""
    inputs = tf_keras.Input(shape=image_shape, name="image")
    x = layers.Rescaling(1.0 / 255)(inputs)
    x = layers.Flatten()(x)
    x = layers.Dense(config["hidden_units"], activation="relu", name="hidden")(x)
    if config["dropout"]:
        x = layers.Dropout(config["dropout"])(x)
    # float32 logits under mixed precision too: a stable softmax and loss.
    outputs = layers.Dense(num_classes, name="logits", dtype="float32")(x)
    return tf_keras.Model(inputs, outputs, name="mlp")
