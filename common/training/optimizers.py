"""The optimizer, learning-rate schedule and compile() every stage trains with."""

import tensorflow as tf
import tf_keras


def learning_rate(config: dict, rate: float, total_steps: int):
    """`rate`, constant or decayed to 0 by a cosine over `total_steps` steps
    (config["lr_schedule"])."""
    if config["lr_schedule"] == "cosine":
        return tf_keras.optimizers.schedules.CosineDecay(rate, max(1, total_steps))
    return rate


def build_optimizer(config: dict, rate: float,
                    total_steps: int) -> tf_keras.optimizers.Optimizer:
    """The optimizer config["optimizer"] names (choices.OPTIMIZERS), at
    `rate` with config's schedule; SGD with config["momentum"]."""
    name = config["optimizer"]
    rate = learning_rate(config, rate, total_steps)
    if name == "sgd":
        return tf_keras.optimizers.SGD(rate, momentum=config["momentum"])
    return {"adam": tf_keras.optimizers.Adam, "adamw": tf_keras.optimizers.AdamW,
            "rmsprop": tf_keras.optimizers.RMSprop}[name](rate)


def compile_model(model: tf_keras.Model, config: dict, rate: float, total_steps: int,
                  speed_levers: bool = True) -> None:
    """Compiles for classification from logits (sparse integer labels), with
    config's steps_per_execution and jit_compile unless `speed_levers` is
    False (one step per call, no XLA)."""
    levers = ({"steps_per_execution": config["steps_per_execution"],
               "jit_compile": config["jit_compile"]} if speed_levers else {})
    model.compile(optimizer=build_optimizer(config, rate, total_steps),
                  loss=tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"], **levers)
    if isinstance(model.distribute_strategy, tf.distribute.MultiWorkerMirroredStrategy):
        # Keras' default ("auto": sum over replicas) adds up the workers'
        # already-synchronised metric values in the progress bar.
        model.distribute_reduction_method = "first"
