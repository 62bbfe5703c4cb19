"""The one training runner: data, model, compile, fit, evaluate, results.

`run(options)` is what launch.py calls and what the tests call in-process.
It creates the strategy first (TensorFlow requires that), resolves the
experiment's hyperparameters, loads the data, and trains with the callbacks
every run gets: BackupAndRestore (the same command resumes), TerminateOnNaN,
a CSV history, TensorBoard scalars and HParams, EarlyStopping when asked.
"""

import dataclasses
import functools
import hashlib
import pathlib
import shutil
import statistics
import time
from typing import Any, Callable, Optional, Sequence

from absl import logging
import numpy as np
import tensorflow as tf
import tf_keras
from tensorboard.plugins.hparams import api as hp

import experiments
from common import data, hparams as hparams_lib, results, speed, strategy as strategy_lib
from common.errors import UserError

MODES = ("train", "eval", "tune")
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
    weights: Optional[str] = None
    init_from: Optional[str] = None
    steps_per_execution: Optional[int] = None
    jit_compile: Optional[bool] = None
    mixed_precision: Optional[str] = None
    data_dir: Optional[str] = None
    results_dir: str = "results"
    run_name: Optional[str] = None
    seed: int = 0
    hparams_file: Optional[str] = None
    # Sweeps (--mode=tune); see common/tuning.py.
    tuner: str = "hyperband"
    max_trials: int = 10
    max_epochs: Optional[int] = None
    hyperband_factor: int = 3
    sweep_name: Optional[str] = None
    # Set by a sweep for its trials: where the run folder goes, and the run a
    # Hyperband trial continues (its weights, from its last epoch).
    run_parent: Optional[str] = None
    warm_start: Optional[str] = None
    initial_epoch: int = 0
    verbose: int = 1  # Keras progress: 1 bar, 2 one line per epoch, 0 none


def resolve_config(experiment, options: RunOptions) -> dict[str, Any]:
    """The experiment's defaults, then --hparams_file, then --hparams, then
    the dedicated flags (--epochs, --batch_size, ...)."""
    config = speed.with_defaults(experiment.get_config())
    if options.hparams_file:
        config = hparams_lib.override(config, hparams_lib.read_file(options.hparams_file))
    config = hparams_lib.override(config, options.hparams)
    for name in ("epochs", "batch_size", "dataset", "weights", "init_from",
                 "steps_per_execution", "jit_compile", "mixed_precision"):
        value = getattr(options, name)
        if value is None:
            continue
        if name not in config:
            raise UserError(f"experiment {options.experiment!r} has no {name!r} "
                            f"hyperparameter, so --{name} does not apply; its "
                            f"hyperparameters: {', '.join(sorted(config))}")
        config[name] = value
    speed.check(config)
    return config


class EpochTimer(tf_keras.callbacks.Callback):
    """Adds to the logs, so the CSV history and TensorBoard record them:
    `train_seconds` (the epoch's training steps only, up to validation),
    `images_per_second` (training images over train_seconds) and
    `epoch_seconds` (the whole epoch: training, validation, callbacks)."""

    def __init__(self, images_per_epoch: int):
        super().__init__()
        self.images_per_epoch = images_per_epoch
        self._start = self._train_end = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()
        self._train_end = 0.0

    def on_test_begin(self, logs=None):
        # fit() validates through the same callbacks: training is over.
        if self._start and not self._train_end:
            self._train_end = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        now = time.perf_counter()
        train = (self._train_end or now) - self._start
        if logs is not None:
            logs["train_seconds"] = train
            logs["epoch_seconds"] = now - self._start
            logs["images_per_second"] = self.images_per_epoch / train
        self._start = 0.0


LR_SCHEDULES = ("constant", "cosine")


def learning_rate(config: dict, rate: float, total_steps: int):
    """`rate`, constant or decayed to 0 by a cosine over `total_steps`."""
    schedule = config.get("lr_schedule", "constant")
    if schedule == "constant":
        return rate
    if schedule == "cosine":
        return tf_keras.optimizers.schedules.CosineDecay(rate, max(1, total_steps))
    raise UserError(f"unknown lr_schedule {schedule!r}; choose one of: "
                    f"{', '.join(LR_SCHEDULES)}")


def build_optimizer(config: dict, rate: float,
                    total_steps: int) -> tf_keras.optimizers.Optimizer:
    name = config["optimizer"].lower()
    rate = learning_rate(config, rate, total_steps)
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


def compile_model(model: tf_keras.Model, config: dict, rate: float,
                  total_steps: int, levers: bool = True) -> None:
    """Compiles for classification from logits, with the speed levers of
    `config` (steps_per_execution, jit_compile) unless `levers` is False."""
    model.compile(
        optimizer=build_optimizer(config, rate, total_steps),
        loss=tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"], **(speed.compile_arguments(config) if levers else {}))


@dataclasses.dataclass
class Phase:
    """A stretch of training with its own trainable layers and learning rate.

    `prepare(model, config)` runs before the phase compiles (for example to
    unfreeze layers). Phases run back to back in one run: one history, one
    TensorBoard timeline with continuous epoch numbers.
    """
    name: str
    epochs: int
    learning_rate: float
    prepare: Optional[Callable[[tf_keras.Model, dict], None]] = None


def phases_of(experiment, config: dict) -> list[Phase]:
    """The experiment's phases, or one phase of `epochs` at `learning_rate`."""
    if hasattr(experiment, "phases"):
        phases = experiment.phases(config)
    else:
        phases = [Phase("train", config["epochs"], config["learning_rate"])]
    for phase in phases:
        if phase.epochs < 0:
            raise UserError(f"phase {phase.name!r} has {phase.epochs} epochs")
    if sum(p.epochs for p in phases) <= 0:
        raise UserError("nothing to train: every phase has 0 epochs")
    return phases


def _callbacks(run_dir: pathlib.Path, config: dict, backup_dir: pathlib.Path,
               images_per_epoch: int) -> list:
    callbacks = [
        # First: a CSV row for epoch k then implies a backup of epoch k, so a
        # resumed run never repeats an epoch the history already shows. The
        # runner deletes the backup itself, once what follows is safe on disk.
        tf_keras.callbacks.BackupAndRestore(str(backup_dir), delete_checkpoint=False),
        EpochTimer(images_per_epoch),
        tf_keras.callbacks.TerminateOnNaN(),
    ]
    if config.get("early_stopping_patience", 0) > 0:
        callbacks.append(tf_keras.callbacks.EarlyStopping(
            monitor="val_loss", patience=config["early_stopping_patience"],
            restore_best_weights=True))
    callbacks += [
        tf_keras.callbacks.CSVLogger(str(run_dir / results.HISTORY_FILE), append=True),
        tf_keras.callbacks.TensorBoard(str(run_dir / "logs")),
    ]
    return callbacks


def _write_hparams(run_dir: pathlib.Path, config: dict, run_name: str) -> None:
    """The run's hyperparameters for TensorBoard's HParams dashboard; its
    metrics are the epoch_* scalars of train/, validation/ and test/."""
    values = {k: v for k, v in config.items() if isinstance(v, (bool, int, float, str))}
    writer = tf.summary.create_file_writer(str(run_dir / "logs"))
    with writer.as_default():
        hp.hparams(values, trial_id=run_name)
    writer.close()


def _write_test_scalars(run_dir: pathlib.Path, step: int, test: dict) -> None:
    """Test figures beside train/ and validation/, so the HParams dashboard
    lists them as metrics of the run."""
    writer = tf.summary.create_file_writer(str(run_dir / "logs" / "test"))
    with writer.as_default():
        for name, value in test.items():
            tf.summary.scalar(f"epoch_{name}", value, step=step)
    writer.close()


def _load_data(config: dict, data_dir: Optional[str]) -> data.Splits:
    return data.load(config["dataset"], data_dir=data_dir,
                     validation_fraction=config.get("validation_fraction", 0.1))


def _pipelines(experiment, splits: data.Splits, batch_size: int, seed: int, config,
               static_shapes: bool = False):
    augment = getattr(experiment, "augment", None)
    if augment is not None:
        augment = functools.partial(_call_augment, augment, config)
    train = data.make_pipeline(splits.train, batch_size, training=True,
                               num_examples=splits.num_train, seed=seed, augment=augment)
    validation = data.make_pipeline(splits.validation, batch_size, training=False,
                                    num_examples=splits.num_validation,
                                    static_shapes=static_shapes)
    test = data.make_pipeline(splits.test, batch_size, training=False,
                              num_examples=splits.num_test, static_shapes=static_shapes)
    return train, validation, test


def _call_augment(augment, config, image, label):
    return augment(image, label, config)


def run(options: RunOptions) -> dict[str, Any]:
    """Trains (or evaluates) one run; returns what metrics.json holds."""
    if options.mode not in MODES:
        raise UserError(f"unknown --mode={options.mode!r}; choose one of: {', '.join(MODES)}")
    experiment = experiments.get(options.experiment)
    if options.strategy == "multi_worker_mirrored" and strategy_lib.tf_config_workers() > 1:
        if options.mode == "train" and not options.run_name:
            raise UserError("--strategy=multi_worker_mirrored with several workers needs "
                            "--run_name, the same on every worker (python -m "
                            "common.local_cluster picks one)")
        if options.mode == "tune" and not options.sweep_name:
            raise UserError("a sweep across several workers needs --sweep_name, the same "
                            "on every worker")
    # The strategy comes before any other TensorFlow op.
    strategy_lib.configure_cpu_devices(options.num_cpu_devices)
    strategy = strategy_lib.get_strategy(options.strategy, tpu=options.tpu,
                                         device=options.device)
    config = resolve_config(experiment, options)
    strategy_lib.check_global_batch(config["batch_size"], strategy)
    if options.mode == "eval":
        return evaluate(experiment, options, config, strategy)
    if options.mode == "tune":
        from common import tuning
        return tuning.sweep(experiment, options, config, strategy)
    return execute(experiment, options, config, strategy)


def execute(experiment, options: RunOptions, config: dict,
            strategy: tf.distribute.Strategy) -> dict[str, Any]:
    """Trains one run of `config` under `strategy` (created by the caller)."""
    tf_keras.utils.set_random_seed(options.seed)
    with speed.precision(config):
        if hasattr(experiment, "train"):  # an experiment with a flow of its own
            return experiment.train(Run.prepare(experiment, options, config, strategy))
        return train(experiment, options, config, strategy)


@dataclasses.dataclass
class Run:
    """One run's data, strategy and folder: what any training flow needs.

    `prepare()` loads the data and builds the pipelines; `start()` claims the
    run folder (call it once the model is known to build, so a mistake leaves
    no folder behind); `fit()` trains with the standard callbacks; `finish()`
    writes metrics.json last and drops what resuming needed.
    """
    experiment_name: str
    options: RunOptions
    config: dict
    strategy: tf.distribute.Strategy
    splits: data.Splits
    train_ds: tf.data.Dataset
    val_ds: tf.data.Dataset
    test_ds: tf.data.Dataset
    steps_per_epoch: int
    run_dir: Optional[pathlib.Path] = None
    # Where this process writes: the run folder on the chief; on the other
    # workers of a cluster a workertemp_<i>/ inside it, removed at the end
    # (the convention tf_keras' BackupAndRestore and ModelCheckpoint follow).
    write_dir: Optional[pathlib.Path] = None
    resuming: bool = False
    started_at: float = 0.0

    @classmethod
    def prepare(cls, experiment, options: RunOptions, config: dict,
                strategy: tf.distribute.Strategy) -> "Run":
        splits = _load_data(config, options.data_dir)
        batch_size = config["batch_size"]
        steps_per_epoch = splits.num_train // batch_size
        if steps_per_epoch == 0:
            raise UserError(f"the training split has {splits.num_train} examples, "
                            f"fewer than one global batch of {batch_size}")
        # TPUs compile for static shapes: every batch full, evaluation included.
        static = isinstance(strategy, tf.distribute.TPUStrategy)
        train_ds, val_ds, test_ds = _pipelines(experiment, splits, batch_size,
                                               options.seed, config, static_shapes=static)
        return cls(options.experiment, options, config, strategy, splits, train_ds,
                   val_ds, test_ds, steps_per_epoch)

    @property
    def replicas(self) -> int:
        return self.strategy.num_replicas_in_sync

    @property
    def num_test_evaluated(self) -> int:
        """The test examples evaluated: all, but on TPUs whole batches only."""
        if isinstance(self.strategy, tf.distribute.TPUStrategy):
            batch = self.config["batch_size"]
            return self.splits.num_test // batch * batch
        return self.splits.num_test

    @property
    def is_chief(self) -> bool:
        return strategy_lib.is_chief(self.strategy)

    def start(self) -> pathlib.Path:
        """Claims the run folder (the chief) or finds it (other workers);
        returns the folder this process writes to."""
        parent = (pathlib.Path(self.options.run_parent) if self.options.run_parent
                  else pathlib.Path(self.options.results_dir) / self.experiment_name)
        label = strategy_lib.strategy_name(self.strategy)
        if not self.is_chief:
            self.run_dir = parent / self.options.run_name
            if (self.run_dir / results.METRICS_FILE).exists():
                raise UserError(f"run {self.run_dir} already finished; choose another "
                                "--run_name (runs are never overwritten)")
            self.write_dir = self.run_dir / f"workertemp_{strategy_lib.task_id(self.strategy)}"
            self.write_dir.mkdir(parents=True, exist_ok=True)
            logging.info("Worker %d is not the chief: the chief writes the run's results; "
                         "this worker keeps its temporary files in %s",
                         strategy_lib.task_id(self.strategy), self.write_dir)
            self.started_at = time.perf_counter()
            return self.write_dir
        self.run_dir, self.resuming = results.claim_run_dir(
            parent, self.options.run_name, self.config)
        self.write_dir = self.run_dir
        logging.info("%s run %s (%s, %d replica(s)); to resume after an interruption: "
                     "--run_name=%s", "Resuming" if self.resuming else "Starting",
                     self.run_dir, label, self.replicas, self.run_dir.name)
        if not (self.run_dir / results.CONFIG_FILE).exists():
            results.write_json_atomic(self.run_dir / results.CONFIG_FILE, {
                "experiment": self.experiment_name,
                "hparams": self.config,
                "flags": dataclasses.asdict(self.options),
                "data_source": self.splits.source,
                "num_replicas": self.replicas,
                "strategy": label,
                "versions": results.library_versions(),
            })
            _write_hparams(self.run_dir, self.config, self.run_dir.name)
        self.started_at = time.perf_counter()
        return self.run_dir

    def fit(self, model: tf_keras.Model, first_epoch: int, end_epoch: int,
            backup_name: str, extra_callbacks: Sequence = ()) -> None:
        """Trains epochs [first_epoch, end_epoch) with the standard callbacks
        and a backup of its own, so the same command resumes inside it."""
        callbacks = _callbacks(self.write_dir, self.config, self.run_dir / "backup" / backup_name,
                               self.steps_per_epoch * self.config["batch_size"])
        model.fit(self.train_ds, validation_data=self.val_ds, initial_epoch=first_epoch,
                  epochs=end_epoch, callbacks=callbacks + list(extra_callbacks),
                  verbose=self.options.verbose)

    def drop_backup(self, backup_name: str) -> None:
        shutil.rmtree(self.run_dir / "backup" / backup_name, ignore_errors=True)

    def finish(self, test: dict[str, float], extra: dict[str, Any]) -> dict[str, Any]:
        """Writes the test scalars and metrics.json (last, atomically)."""
        history = results.read_history(self.write_dir)
        _write_test_scalars(self.write_dir, len(history), test)
        seconds = [row["epoch_seconds"] for row in history if "epoch_seconds" in row]
        rates = [row["images_per_second"] for row in history if "images_per_second" in row]
        metrics = {
            "experiment": self.experiment_name,
            "run": self.run_dir.name,
            "status": "completed",
            "dataset": self.config["dataset"],
            "data_source": self.splits.source,
            "strategy": strategy_lib.strategy_name(self.strategy),
            "num_replicas": self.replicas,
            "global_batch_size": self.config["batch_size"],
            "epochs": len(history),
            "test_accuracy": float(test["accuracy"]),
            "test_loss": float(test["loss"]),
            "num_test_examples": self.num_test_evaluated,
            "seconds_per_epoch": seconds,
            # Steady state: the first epoch includes graph tracing.
            "train_images_per_second": statistics.median(rates[1:] or rates) if rates else None,
            "seconds_this_invocation": time.perf_counter() - self.started_at,
            "history": history,
            **extra,
        }
        if not self.is_chief:
            shutil.rmtree(self.write_dir, ignore_errors=True)
            logging.info("Worker %d finished; test accuracy %.4f (the chief writes metrics)",
                         strategy_lib.task_id(self.strategy), test["accuracy"])
            return metrics
        results.write_json_atomic(self.run_dir / results.METRICS_FILE, metrics)
        # Only now is the run safe on disk: drop what resuming needed.
        for leftover in ("backup", "phases", "stages"):
            shutil.rmtree(self.run_dir / leftover, ignore_errors=True)
        logging.info("Finished %s: test accuracy %.4f, test loss %.4f", self.run_dir,
                     test["accuracy"], test["loss"])
        return metrics


def weights_checksum(model: tf_keras.Model) -> str:
    """SHA-256 of the model's weights: equal on every worker of an all-reduce
    run, which is what synchronous data-parallel training promises."""
    digest = hashlib.sha256()
    for weight in model.weights:
        digest.update(np.ascontiguousarray(weight.numpy()).tobytes())
    return digest.hexdigest()[:16]


def _phase_dir(run_dir: pathlib.Path, phase: Phase) -> pathlib.Path:
    return run_dir / "phases" / phase.name


def train(experiment, options: RunOptions, config: dict,
          strategy: tf.distribute.Strategy) -> dict[str, Any]:
    """The standard flow: build, train the phases, evaluate, save."""
    phases = phases_of(experiment, config)
    run = Run.prepare(experiment, options, config, strategy)
    # Built before the run folder exists, so that a model that cannot be
    # built (weights missing, no network) leaves no folder behind.
    with strategy.scope():
        model = experiment.build_model(config, run.splits.image_shape,
                                       run.splits.num_classes)
        if options.warm_start:
            previous = tf_keras.models.load_model(
                pathlib.Path(options.warm_start) / "model" / "model.keras")
            model.set_weights(previous.get_weights())
    write_dir = run.start()
    phase_records = _fit_phases(run, model, phases, start_epoch=options.initial_epoch)
    test_loss, test_accuracy = model.evaluate(run.test_ds, verbose=0)
    checksum = weights_checksum(model)
    logging.info("Final weights checksum: %s", checksum)
    # Every worker saves (saving may synchronise); the others into their temp.
    model_path = write_dir / "model" / "model.keras"
    model_path.parent.mkdir(exist_ok=True)
    model.save(model_path)

    by_epoch = {row["epoch"]: row for row in results.read_history(write_dir)}
    for record in phase_records:
        last = by_epoch.get(record["last_epoch"], {})
        record["final_validation"] = {k: v for k, v in last.items() if k.startswith("val_")}
    return run.finish({"loss": test_loss, "accuracy": test_accuracy}, {
        "phases": phase_records,
        "final_validation": phase_records[-1]["final_validation"],
        "model_path": str(model_path.relative_to(write_dir)),
        "weights_checksum": checksum,
    })


def _fit_phases(run: Run, model: tf_keras.Model, phases: list[Phase],
                start_epoch: int = 0) -> list[dict]:
    """Runs the phases in order, skipping those a previous invocation finished.

    A finished phase (but the last) leaves its weights and a `done.json`
    marker in phases/<name>/, so a run killed in phase k resumes in phase k
    with phase k's trainable layers and learning rate, from its backup.
    """
    records, epoch, finished_weights = [], 0, None
    for index, phase in enumerate(phases):
        first, end = max(epoch, start_epoch), epoch + phase.epochs
        epoch = end
        records.append({"name": phase.name, "first_epoch": first, "last_epoch": end - 1,
                        "learning_rate": phase.learning_rate})
        if end <= first:
            continue
        phase_dir = _phase_dir(run.write_dir, phase)
        is_last = index == len(phases) - 1
        if not is_last and (phase_dir / "done.json").exists():
            finished_weights = phase_dir / "weights"
            logging.info("Phase %s already finished (epochs %d-%d)", phase.name,
                         first + 1, end)
            continue
        with run.strategy.scope():
            if finished_weights is not None:
                model.load_weights(str(finished_weights)).expect_partial()
                finished_weights = None
            if phase.prepare is not None:
                phase.prepare(model, run.config)
            compile_model(model, run.config, phase.learning_rate,
                          run.steps_per_epoch * (end - first))
        if len(phases) > 1:
            logging.info("Phase %s: epochs %d-%d, learning rate %g, %d trainable weights",
                         phase.name, first + 1, end, phase.learning_rate,
                         len(model.trainable_weights))
        run.fit(model, first, end, backup_name=phase.name)
        if not is_last:
            phase_dir.mkdir(parents=True, exist_ok=True)
            model.save_weights(str(phase_dir / "weights"))
            results.write_json_atomic(phase_dir / "done.json", records[-1])
            run.drop_backup(phase.name)
    return records


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
    splits = _load_data(config, options.data_dir)
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
