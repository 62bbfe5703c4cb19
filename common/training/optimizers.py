"""The optimizer, learning-rate schedule and compile() every stage trains with."""

import tensorflow as tf
import tf_keras


def learning_rate(config: dict, rate: float, total_steps: int):
    """`rate`, constant or decayed by a cosine (config["lr_schedule"]).

    Args:
        config: the run's hyperparameters; lr_schedule is one of
            common.config.choices.LR_SCHEDULES ("cosine"; anything else is
            constant).
        rate: the learning rate, or the cosine's initial one.
        total_steps: training steps the cosine spans (at least 1 is used).

    Returns:
        `rate` itself (a float) for a constant rate, or a
        tf_keras.optimizers.schedules.CosineDecay from `rate` to 0 over
        `total_steps` steps (alpha 0, tf_keras' default), 0 after them.
    """
    if config["lr_schedule"] == "cosine":
        return tf_keras.optimizers.schedules.CosineDecay(rate, max(1, total_steps))
    return rate


def build_optimizer(config: dict, rate: float,
                    total_steps: int) -> tf_keras.optimizers.Optimizer:
    """The optimizer config["optimizer"] names, at `rate` with config's schedule.

    Args:
        config: the run's hyperparameters: optimizer (one of
            common.config.choices.OPTIMIZERS: "adam", "adamw", "sgd",
            "rmsprop"), lr_schedule, and momentum for SGD.
        rate: the learning rate (learning_rate's `rate`).
        total_steps: the steps a cosine schedule spans.

    Returns:
        A new tf_keras optimizer (Adam, AdamW, SGD with config["momentum"],
        or RMSprop), its other settings tf_keras' defaults.
    """
    name = config["optimizer"]
    rate = learning_rate(config, rate, total_steps)
    if name == "sgd":
        return tf_keras.optimizers.SGD(rate, momentum=config["momentum"])
    return {"adam": tf_keras.optimizers.Adam, "adamw": tf_keras.optimizers.AdamW,
            "rmsprop": tf_keras.optimizers.RMSprop}[name](rate)


def compile_model(model: tf_keras.Model, config: dict, rate: float, total_steps: int,
                  speed_levers: bool = True) -> None:
    """Compiles for classification from logits (sparse integer labels).

    The loss is SparseCategoricalCrossentropy(from_logits=True), the metric
    accuracy, the optimizer build_optimizer's. Under
    MultiWorkerMirroredStrategy the model's distribute_reduction_method is
    "first", since Keras' default adds up the workers' already synchronised
    metrics.

    Args:
        model: the model, built under the strategy it trains in.
        config: the run's hyperparameters (optimizer, lr_schedule,
            momentum, steps_per_execution, jit_compile).
        rate: the stage's learning rate.
        total_steps: the stage's training steps (for a cosine schedule).
        speed_levers: whether config's steps_per_execution and jit_compile
            apply; False: Keras' defaults (one step per call, no XLA).
    """
    levers = ({"steps_per_execution": config["steps_per_execution"],
               "jit_compile": config["jit_compile"]} if speed_levers else {})
    model.compile(optimizer=build_optimizer(config, rate, total_steps),
                  loss=tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"], **levers)
    if isinstance(model.distribute_strategy, tf.distribute.MultiWorkerMirroredStrategy):
        # Keras' default ("auto": sum over replicas) adds up the workers'
        # already-synchronised metric values in the progress bar.
        model.distribute_reduction_method = "first"
