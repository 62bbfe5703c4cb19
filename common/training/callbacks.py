"""The callbacks every stage of every run trains with.

The callbacks, in the order Keras calls them at the end of an epoch:

  stage callbacks        the stage's own (UpdatePruningStep re-masks first)
  EpochRecorder          validation (exact: training/evaluation.py), timing
  DivergenceGuard        a non-finite loss stops the stage; the run fails
  ResumableEarlyStopping EarlyStopping whose state survives a kill
  EpochLogKeeper         the epoch's logs beside the backup, before it
  BackupAndRestore       the model and optimizer, so the command resumes
  FlushingTensorBoard    train/ and validation/ scalars, flushed every epoch
  HistoryWriter          history.csv (one row per epoch, rewritten atomically)

Everything that must survive a kill is written before the backup of its
epoch; history.csv and TensorBoard after it, and on a resume the epoch the
backup holds but history.csv lacks is written from EpochLogKeeper's file.
So history.csv and TensorBoard hold every epoch once, resumed or not.
"""

import math
import pathlib
import time
from typing import Any, Callable, Optional

from absl import logging
import numpy as np
import tensorflow as tf
import tf_keras

from common.errors import UserError
from common.runs import files

LOG_FILE = "last_epoch.json"


class EpochRecorder(tf_keras.callbacks.Callback):
    """Validates at the end of each epoch and adds the figures and timings to its logs.

    Validation uses an exact evaluator (every validation example scored
    once, whatever the replicas and remainder). The logs gain val_loss and
    val_accuracy (unless there is no validator, or training was already
    stopped, e.g. by DivergenceGuard), `train_seconds` (training steps
    only), `wall_seconds` (the whole epoch, validation included) and
    `images_per_second` (training images of the steps that really ran, by
    the optimizer's step counter, over train_seconds; absent when no step
    ran).

    Args:
        global_batch: training examples per step, over all replicas and
            workers.
        validate: called with no arguments, returns {"loss", "accuracy"}
            (an Evaluator over the validation batches); None: no validation.
    """

    def __init__(self, global_batch: int, validate: Optional[Callable[[], dict]]):
        super().__init__()
        self.global_batch = global_batch
        self.validate = validate
        self._start = 0.0
        self._steps = 0

    def _iterations(self) -> int:
        # The optimizer's step counter: the steps really applied, also where
        # an epoch ends inside a call of steps_per_execution steps.
        return int(self.model.optimizer.iterations.numpy())

    def on_epoch_begin(self, epoch, logs=None):
        self._steps = self._iterations()
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        train = time.perf_counter() - self._start
        self._steps = self._iterations() - self._steps
        if logs is None:
            return
        if self.validate is not None and not self.model.stop_training:
            scores = self.validate()
            logs.update({"val_loss": scores["loss"], "val_accuracy": scores["accuracy"]})
        logs["train_seconds"] = train
        logs["wall_seconds"] = time.perf_counter() - self._start
        if self._steps:
            logs["images_per_second"] = self._steps * self.global_batch / train


class DivergenceGuard(tf_keras.callbacks.Callback):
    """TerminateOnNaN that remembers where the loss stopped being finite.

    A non-finite training loss stops training and sets `diverged` to a
    sentence naming the epoch and batch (1-based; a range of batches where
    steps_per_execution ran several between two checks).

    Attributes:
        diverged: that sentence, or None while the loss is finite.
    """

    def __init__(self):
        super().__init__()
        self.diverged: Optional[str] = None
        self._epoch = 0
        self._last_batch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        self._last_batch = 0

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            first = self._last_batch + 1
            where = (f"batch {batch + 1}" if first >= batch + 1
                     else f"one of batches {first}-{batch + 1}")
            self.diverged = (f"training loss became {float(loss)} in epoch {self._epoch + 1}, "
                             f"{where}")
            self.model.stop_training = True
        self._last_batch = batch + 1


class ResumableEarlyStopping(tf_keras.callbacks.EarlyStopping):
    """EarlyStopping on val_loss, restoring the best weights, whose state survives a kill.

    Its state (patience used, best value and epoch, best weights) is written
    at each epoch's end into `state_dir` (early_stopping_<epoch>.json and
    early_stopping_best_<epoch>.npz), before the backup of that epoch; a
    resumed stage continues from the state of the epoch its backup holds,
    so it stops at the same epoch and keeps the same weights as an
    uninterrupted one. Only the files a resume from this epoch or the one
    before may need are kept.

    Args:
        patience: epochs without a better val_loss before the stage stops
            (config["early_stopping_patience"]).
        state_dir: the folder the state is written to (the stage's backup
            folder).
    """

    def __init__(self, patience: int, state_dir: pathlib.Path):
        super().__init__(monitor="val_loss", patience=patience, restore_best_weights=True)
        self.state_dir = pathlib.Path(state_dir)
        self._first_epoch: Optional[int] = None

    def _state(self, epoch: int) -> pathlib.Path:
        return self.state_dir / f"early_stopping_{epoch}.json"

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        self._first_epoch = None

    def on_epoch_begin(self, epoch, logs=None):
        if self._first_epoch is not None:
            return
        self._first_epoch = epoch
        path = self._state(epoch - 1)
        if not path.exists():
            return
        state = files.read_json(path)
        self.wait, self.best = state["wait"], state["best"]
        self.best_epoch = state["best_epoch"]
        with np.load(self.state_dir / f"early_stopping_best_{self.best_epoch}.npz") as f:
            self.best_weights = [f[f"arr_{i}"] for i in range(len(f.files))]
        logging.info("Early stopping resumed: best val_loss %.4f at epoch %d, %d of %d "
                     "epochs of patience used", self.best, self.best_epoch + 1,
                     self.wait, self.patience)

    def on_epoch_end(self, epoch, logs=None):
        super().on_epoch_end(epoch, logs)
        if self.best_weights is None:
            return
        self.state_dir.mkdir(parents=True, exist_ok=True)
        best_file = self.state_dir / f"early_stopping_best_{self.best_epoch}.npz"
        if not best_file.exists():
            tmp = best_file.with_suffix(".tmp.npz")
            np.savez(tmp, *self.best_weights)
            tmp.replace(best_file)
        files.write_json_atomic(self._state(epoch), {
            "epoch": epoch, "wait": self.wait, "best": float(self.best),
            "best_epoch": self.best_epoch, "stopped_epoch": self.stopped_epoch})
        # Keep what a resume from this epoch or the one before may need.
        keep = {self._state(epoch).name, self._state(epoch - 1).name, best_file.name}
        previous = self._state(epoch - 1)
        if previous.exists():
            keep.add(f"early_stopping_best_{files.read_json(previous)['best_epoch']}.npz")
        for path in self.state_dir.glob("early_stopping_*"):
            if path.name not in keep:
                path.unlink(missing_ok=True)


class EpochLogKeeper(tf_keras.callbacks.Callback):
    """Writes the epoch's logs beside the backup, before it.

    On a resume, HistoryWriter takes from it the epoch whose backup was
    written but whose history row was not. The file, last_epoch.json
    (LOG_FILE), holds {"epoch": 0-based, "logs": JSON-safe floats, None for
    non-finite ones}.

    Args:
        backup_dir: the stage's backup folder.
    """

    def __init__(self, backup_dir: pathlib.Path):
        super().__init__()
        self.backup_dir = pathlib.Path(backup_dir)

    def on_epoch_end(self, epoch, logs=None):
        self.backup_dir.mkdir(parents=True, exist_ok=True)
        files.write_json_atomic(self.backup_dir / LOG_FILE,
                                  {"epoch": epoch, "logs": _plain(logs or {})})


class FlushingTensorBoard(tf_keras.callbacks.TensorBoard):
    """TensorBoard whose event files are flushed at every epoch's end, so a
    kill loses no epoch that history.csv has."""

    def on_epoch_end(self, epoch, logs=None):
        super().on_epoch_end(epoch, logs)
        for writer in self._writers.values():
            writer.flush()


class HistoryWriter(tf_keras.callbacks.Callback):
    """Writes history.csv: one row per epoch, the file rewritten atomically each epoch.

    A kill never leaves a torn line. At the first epoch of a fit it puts
    the file in step with the backup Keras resumed from: rows from that
    epoch on are dropped (they will be redone), and the epoch before it, if
    missing and inside the stage, is written from EpochLogKeeper's file (to
    TensorBoard too).

    Args:
        run_dir: the folder history.csv and logs/ are in (the folder this
            process writes to).
        backup_dir: the stage's backup folder (EpochLogKeeper's file).
        stage_first_epoch: the stage's first epoch, 0-based, counted across
            stages.
        stage_name: the stage's name, for the log.
    """

    def __init__(self, run_dir: pathlib.Path, backup_dir: pathlib.Path, stage_first_epoch: int,
                 stage_name: str):
        super().__init__()
        self.path = pathlib.Path(run_dir) / files.HISTORY_FILE
        self.logs_dir = pathlib.Path(run_dir) / "logs"
        self.backup_dir = pathlib.Path(backup_dir)
        self.stage_first_epoch = stage_first_epoch
        self.stage_name = stage_name
        self._checked = False

    def on_train_begin(self, logs=None):
        self._checked = False

    def on_epoch_begin(self, epoch, logs=None):
        if self._checked:
            return
        self._checked = True
        rows = files.read_history(self.path.parent)
        later = [r for r in rows if r["epoch"] >= epoch]
        rows = [r for r in rows if r["epoch"] < epoch]
        if epoch > self.stage_first_epoch and not any(r["epoch"] == epoch - 1 for r in rows):
            kept = self.backup_dir / LOG_FILE
            if kept.exists() and files.read_json(kept).get("epoch") == epoch - 1:
                row = {"epoch": epoch - 1, **files.read_json(kept)["logs"]}
                rows.append(row)
                write_epoch_scalars(self.logs_dir, row)
        if epoch == self.stage_first_epoch and later:
            logging.warning("Stage %s: no backup to resume from; restarting it at epoch %d "
                            "(history from there on is dropped)", self.stage_name, epoch + 1)
        if later or rows != files.read_history(self.path.parent):
            files.write_history(self.path.parent, rows)

    def on_epoch_end(self, epoch, logs=None):
        rows = [r for r in files.read_history(self.path.parent) if r["epoch"] != epoch]
        rows.append({"epoch": epoch, **_plain(logs or {})})
        files.write_history(self.path.parent, rows)


def write_epoch_scalars(logs_dir: pathlib.Path, row: dict) -> None:
    """Writes one epoch's figures into logs/train and logs/validation.

    Tagged as Keras' TensorBoard callback tags them (epoch_loss, ...): the
    val_ prefix is dropped in validation/; None values are skipped.

    Args:
        logs_dir: the logs/ folder of the folder this process writes to.
        row: a history row: {"epoch": 0-based epoch (the scalars' step),
            name: float or None, ...}; names starting with val_ go to
            validation/, the others to train/.
    """
    for folder, keys in (("train", [k for k in row if k != "epoch" and not k.startswith("val_")]),
                         ("validation", [k for k in row if k.startswith("val_")])):
        writer = tf.summary.create_file_writer(str(logs_dir / folder))
        with writer.as_default():
            for key in keys:
                if row[key] is not None:
                    tag = key[4:] if key.startswith("val_") else key
                    tf.summary.scalar(f"epoch_{tag}", row[key], step=row["epoch"])
        writer.close()


def _plain(logs: dict) -> dict[str, Any]:
    """Logs as JSON-safe floats (non-finite values become None)."""
    out = {}
    for key, value in logs.items():
        try:
            number = float(value)
        except (TypeError, ValueError):
            continue
        out[key] = number if math.isfinite(number) else None
    return out


def stage_callbacks(*, write_dir: pathlib.Path, backup_dir: pathlib.Path,
                    keras_backup_dir: pathlib.Path, config: dict, global_batch: int,
                    validate: Optional[Callable[[], dict]], stage_first_epoch: int,
                    stage_name: str, guard: DivergenceGuard,
                    extra: list) -> tuple[list, Optional[ResumableEarlyStopping]]:
    """The callbacks of one stage, in the order of the module docstring.

    Args:
        write_dir: the folder this process writes to (history.csv, logs/).
        backup_dir: the stage's backup folder (early stopping's state, the
            last epoch's logs).
        keras_backup_dir: BackupAndRestore's folder (the chief's, on every
            worker).
        config: the run's hyperparameters (early_stopping_patience; 0: off).
        global_batch: training examples per step, over all replicas and
            workers.
        validate: EpochRecorder's validator, or None.
        stage_first_epoch: the stage's first epoch, 0-based, counted across
            stages.
        stage_name: the stage's name.
        guard: the stage's DivergenceGuard.
        extra: the stage's own callbacks, which come first.

    Returns:
        (the callbacks, the ResumableEarlyStopping among them or None when
        early stopping is off).
    """
    early = None
    if config["early_stopping_patience"] > 0:
        early = ResumableEarlyStopping(config["early_stopping_patience"], backup_dir)
    callbacks = [*extra, EpochRecorder(global_batch, validate), guard]
    callbacks += [early] if early else []
    callbacks += [
        EpochLogKeeper(backup_dir),
        tf_keras.callbacks.BackupAndRestore(str(keras_backup_dir), delete_checkpoint=False),
        FlushingTensorBoard(str(write_dir / "logs")),
        HistoryWriter(write_dir, backup_dir, stage_first_epoch, stage_name),
    ]
    return callbacks, early


def check_backup(keras_dir: pathlib.Path, run_dir: pathlib.Path) -> None:
    """Checks that a stage's BackupAndRestore checkpoint, if any, can be read.

    Every tensor of the latest checkpoint in `keras_dir`/chief is read. No
    chief/ folder, or one without a "checkpoint" state file (a first save
    cut short), is no backup: the stage starts afresh.

    Args:
        keras_dir: BackupAndRestore's folder of the stage.
        run_dir: the run folder (its name goes into the message).

    Raises:
        UserError: the checkpoint is damaged (truncated, corrupt, or named
            by no readable "checkpoint" file); the message names the folder
            and the way to start over (--restart or another --run_name).
    """
    # tf_keras' BackupAndRestore reads its checkpoint from <dir>/chief, with
    # one worker or several (other workers' temporary copies sit beside it).
    keras_dir = pathlib.Path(keras_dir) / "chief"
    if not keras_dir.exists():
        return
    try:
        prefix = tf.train.latest_checkpoint(str(keras_dir))
        if prefix is None:
            # No "checkpoint" state file: a first save cut short (a kill, a
            # full disk) left only its pieces, and tf_keras starts the stage
            # afresh, as it would with an empty folder.
            if (keras_dir / "checkpoint").exists():
                raise ValueError("its 'checkpoint' file names no readable checkpoint")
            return
        reader = tf.train.load_checkpoint(prefix)
        for name in reader.get_variable_to_shape_map():
            reader.get_tensor(name)
    except (tf.errors.OpError, ValueError, OSError, IndexError, RuntimeError) as e:
        # A truncated data file raises IndexError ("Read less bytes than
        # requested") from the C++ reader; a corrupt index, DataLossError.
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"the backup in {keras_dir} is damaged ({first[:200]}); "
                        f"rerun with --restart to start run {run_dir.name} over, or "
                        "choose another --run_name") from None

