"""The one training runner: data, model, compile, fit, evaluate, results.

`run(options)` is what launch.py calls and what the tests call in-process.
It creates the strategy first (TensorFlow requires that), resolves the
experiment's hyperparameters, loads the data, and trains with the callbacks
every run gets: BackupAndRestore (the same command resumes), TerminateOnNaN,
a CSV history, TensorBoard scalars and HParams, EarlyStopping when asked.
"""

import dataclasses
import pathlib
import statistics
import time
from typing import Any, Optional

from absl import logging
import tensorflow as tf
import tf_keras
from tensorboard.plugins.hparams import api as hp

import experiments
from common import data, hparams as hparams_lib, results, strategy as strategy_lib
from common.errors import UserError

MODES = ("train", "eval")
OPTIMIZERS = ("adam", "sgd", "rmsprop", "adamw")


@dataclasses.dataclass
class RunOptions:
    """Everything launch.py's flags say; defaults match the flags'."""
    experiment: str
    strategy: str = "default"
    tpu: str = ""
    device: str = "cpu"
    num_cpu_devices: int = 0
    mode: str = "train"
    epochs: Optional[int] = None
    batch_size: Optional[int] = None
    hparams: tuple[str, ...] = ()
    dataset: Optional[str] = None
    data_dir: Optional[str] = None
    results_dir: str = "results"
    run_name: Optional[str] = None
    seed: int = 0
    verbose: int = 1  # Keras progress: 1 bar, 2 one line per epoch, 0 none


def resolve_config(experiment, options: RunOptions) -> dict[str, Any]:
    """The experiment's defaults, then --hparams, then the dedicated flags."""
    config = hparams_lib.override(experiment.get_config(), options.hparams)
    for name in ("epochs", "batch_size", "dataset"):
        value = getattr(options, name)
        if value is not None:
            config[name] = value
    if config["epochs"] <= 0:
        raise UserError(f"epochs must be positive, got {config['epochs']}")
    return config


class EpochTimer(tf_keras.callbacks.Callback):
    """Adds seconds per epoch and training images per second to the logs, so
    the CSV history and TensorBoard record them next to loss and accuracy."""

    def __init__(self, images_per_epoch: int):
        super().__init__()
        self.images_per_epoch = images_per_epoch
        self._start = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        seconds = time.perf_counter() - self._start
        if logs is not None:
            logs["epoch_seconds"] = seconds
            logs["images_per_second"] = self.images_per_epoch / seconds


LR_SCHEDULES = ("constant", "cosine")


def learning_rate(config: dict, total_steps: int):
    """The configured rate, constant or decayed to 0 by a cosine over the run."""
    schedule = config.get("lr_schedule", "constant")
    rate = config["learning_rate"]
    if schedule == "constant":
        return rate
    if schedule == "cosine":
        return tf_keras.optimizers.schedules.CosineDecay(rate, max(1, total_steps))
    raise UserError(f"unknown lr_schedule {schedule!r}; choose one of: "
                    f"{', '.join(LR_SCHEDULES)}")


def build_optimizer(config: dict, total_steps: int) -> tf_keras.optimizers.Optimizer:
    name = config["optimizer"].lower()
    rate = learning_rate(config, total_steps)
    if name == "adam":
        return tf_keras.optimizers.Adam(rate)
    if name == "adamw":
        return tf_keras.optimizers.AdamW(rate)
    if name == "sgd":
        return tf_keras.optimizers.SGD(rate, momentum=config.get("momentum", 0.9))
    if name == "rmsprop":
        return tf_keras.optimizers.RMSprop(rate)
    raise UserError(f"unknown optimizer {config['optimizer']!r}; choose one of: "
                    f"{', '.join(OPTIMIZERS)}")


def compile_model(model: tf_keras.Model, config: dict, total_steps: int) -> None:
    model.compile(
        optimizer=build_optimizer(config, total_steps),
        loss=tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"])


def _callbacks(run_dir: pathlib.Path, config: dict, run_name: str,
               images_per_epoch: int) -> list:
    logs = run_dir / "logs"
    callbacks = [
        # First: a CSV row for epoch k then implies a backup of epoch k, so a
        # resumed run never repeats an epoch the history already shows.
        tf_keras.callbacks.BackupAndRestore(str(run_dir / "backup")),
        EpochTimer(images_per_epoch),
        tf_keras.callbacks.TerminateOnNaN(),
    ]
    if config.get("early_stopping_patience", 0) > 0:
        callbacks.append(tf_keras.callbacks.EarlyStopping(
            monitor="val_loss", patience=config["early_stopping_patience"],
            restore_best_weights=True))
    callbacks += [
        tf_keras.callbacks.CSVLogger(str(run_dir / results.HISTORY_FILE), append=True),
        tf_keras.callbacks.TensorBoard(str(logs)),
        hp.KerasCallback(str(logs), _hparams_for_tensorboard(config), trial_id=run_name),
    ]
    return callbacks


def _hparams_for_tensorboard(config: dict) -> dict:
    return {k: v for k, v in config.items() if isinstance(v, (bool, int, float, str))}


def _write_test_scalars(run_dir: pathlib.Path, step: int, test: dict) -> None:
    """Test figures beside train/ and validation/, so the HParams dashboard
    lists them as metrics of the run."""
    writer = tf.summary.create_file_writer(str(run_dir / "logs" / "test"))
    with writer.as_default():
        for name, value in test.items():
            tf.summary.scalar(f"epoch_{name}", value, step=step)
    writer.close()


def _load_data(experiment, config: dict, data_dir: Optional[str]) -> data.Splits:
    return data.load(config["dataset"], data_dir=data_dir,
                     validation_fraction=config.get("validation_fraction", 0.1))


def _pipelines(experiment, splits: data.Splits, batch_size: int, seed: int, config):
    augment = getattr(experiment, "augment", None)
    if augment is not None:
        augment = lambda image, label, _f=augment: _f(image, label, config)  # noqa: E731
    train = data.make_pipeline(splits.train, batch_size, training=True,
                               num_examples=splits.num_train, seed=seed, augment=augment)
    validation = data.make_pipeline(splits.validation, batch_size, training=False,
                                    num_examples=splits.num_validation)
    test = data.make_pipeline(splits.test, batch_size, training=False,
                              num_examples=splits.num_test)
    return train, validation, test


def run(options: RunOptions) -> dict[str, Any]:
    """Trains (or evaluates) one run; returns what metrics.json holds."""
    if options.mode not in MODES:
        raise UserError(f"unknown --mode={options.mode!r}; choose one of: {', '.join(MODES)}")
    experiment = experiments.get(options.experiment)
    # The strategy comes before any other TensorFlow op.
    strategy_lib.configure_cpu_devices(options.num_cpu_devices)
    strategy = strategy_lib.get_strategy(options.strategy, tpu=options.tpu,
                                         device=options.device)
    config = resolve_config(experiment, options)
    strategy_lib.check_global_batch(config["batch_size"], strategy)
    if options.mode == "eval":
        return evaluate(experiment, options, config, strategy)
    return train(experiment, options, config, strategy)


def train(experiment, options: RunOptions, config: dict,
          strategy: tf.distribute.Strategy) -> dict[str, Any]:
    tf_keras.utils.set_random_seed(options.seed)
    splits = _load_data(experiment, config, options.data_dir)
    batch_size = config["batch_size"]
    steps_per_epoch = splits.num_train // batch_size
    if steps_per_epoch == 0:
        raise UserError(f"the training split has {splits.num_train} examples, fewer "
                        f"than one global batch of {batch_size}")
    train_ds, val_ds, test_ds = _pipelines(experiment, splits, batch_size,
                                           options.seed, config)

    run_dir, resuming = results.claim_run_dir(
        options.results_dir, options.experiment, options.run_name, config)
    run_name = run_dir.name
    replicas = strategy.num_replicas_in_sync
    strategy_label = strategy_lib.strategy_name(strategy)
    logging.info("%s run %s (%s, %d replica(s)); to resume after an interruption: "
                 "--run_name=%s", "Resuming" if resuming else "Starting", run_dir,
                 strategy_label, replicas, run_name)
    results.write_json_atomic(run_dir / results.CONFIG_FILE, {
        "experiment": options.experiment,
        "hparams": config,
        "flags": dataclasses.asdict(options),
        "data_source": splits.source,
        "num_replicas": replicas,
        "strategy": strategy_label,
        "versions": results.library_versions(),
    })

    with strategy.scope():
        model = experiment.build_model(config, splits.image_shape, splits.num_classes)
        compile_model(model, config, steps_per_epoch * config["epochs"])
    callbacks = _callbacks(run_dir, config, run_name, steps_per_epoch * batch_size)
    start = time.perf_counter()
    model.fit(train_ds, validation_data=val_ds, epochs=config["epochs"],
              callbacks=callbacks, verbose=options.verbose)
    train_seconds = time.perf_counter() - start
    test_loss, test_accuracy = model.evaluate(test_ds, verbose=0)

    history = results.read_history(run_dir)
    _write_test_scalars(run_dir, len(history), {"loss": test_loss, "accuracy": test_accuracy})
    model_path = run_dir / "model" / "model.keras"
    model_path.parent.mkdir(exist_ok=True)
    model.save(model_path)
    backup = run_dir / "backup"
    if backup.is_dir() and not any(backup.iterdir()):
        backup.rmdir()  # BackupAndRestore empties it once training finished.

    seconds = [row["epoch_seconds"] for row in history if "epoch_seconds" in row]
    rates = [row["images_per_second"] for row in history if "images_per_second" in row]
    metrics = {
        "experiment": options.experiment,
        "run": run_name,
        "status": "completed",
        "dataset": config["dataset"],
        "data_source": splits.source,
        "strategy": strategy_label,
        "num_replicas": replicas,
        "global_batch_size": batch_size,
        "epochs": len(history),
        "test_accuracy": float(test_accuracy),
        "test_loss": float(test_loss),
        "num_test_examples": splits.num_test,
        "final_validation": {k: v for k, v in (history[-1] if history else {}).items()
                             if k.startswith("val_")},
        "seconds_per_epoch": seconds,
        # Steady state: the first epoch includes graph tracing.
        "train_images_per_second": statistics.median(rates[1:] or rates) if rates else None,
        "train_seconds_this_invocation": train_seconds,
        "history": history,
        "model_path": str(model_path.relative_to(run_dir)),
    }
    results.write_json_atomic(run_dir / results.METRICS_FILE, metrics)
    logging.info("Finished %s: test accuracy %.4f, test loss %.4f", run_dir,
                 test_accuracy, test_loss)
    return metrics


def evaluate(experiment, options: RunOptions, config: dict,
             strategy: tf.distribute.Strategy) -> dict[str, Any]:
    """--mode=eval: the saved model of --run_name on the test split."""
    if not options.run_name:
        raise UserError("--mode=eval needs --run_name of a finished run")
    run_dir = pathlib.Path(options.results_dir) / options.experiment / options.run_name
    model_path = run_dir / "model" / "model.keras"
    if not model_path.exists():
        raise UserError(f"no trained model at {model_path}")
    saved = results.read_json(run_dir / results.CONFIG_FILE)["hparams"]
    if options.dataset is None:
        config["dataset"] = saved["dataset"]
    config["validation_fraction"] = saved.get("validation_fraction", 0.1)
    splits = _load_data(experiment, config, options.data_dir)
    test_ds = data.make_pipeline(splits.test, config["batch_size"], training=False,
                                 num_examples=splits.num_test)
    with strategy.scope():
        model = tf_keras.models.load_model(model_path)
    test_loss, test_accuracy = model.evaluate(test_ds, verbose=1)
    metrics = {"run": options.run_name, "dataset": config["dataset"],
               "test_accuracy": float(test_accuracy), "test_loss": float(test_loss),
               "num_test_examples": splits.num_test}
    results.write_json_atomic(run_dir / "eval.json", metrics)
    logging.info("Evaluated %s on %s: test accuracy %.4f", model_path,
                 config["dataset"], test_accuracy)
    return metrics
