"""The stage runner: runs any list of stages (training/stages.py) with one
resume layout for all: finished stages restored from disk, the interrupted
one continued from its backup, the rest trained."""

import contextlib
import dataclasses
import pathlib
import shutil
from typing import Any, Callable, Optional

from absl import logging
import tensorflow as tf
import tf_keras

from common.distribute import strategy as strategy_lib
from common.runs import files, saved
from common.training import callbacks as callback_lib, optimizers, precision
from common.training.stages import Stage, StageContext, StageRecord

# What a stage falls back from: TFMOT's errors under tf.distribute.
FALLBACK_ERRORS = (ValueError, TypeError, NotImplementedError, RuntimeError,
                   tf.errors.OpError)


def _model_file(stage: "Stage") -> str:
    return "model.h5" if stage.keep == "h5" else "model.keras"


@dataclasses.dataclass
class Outcome:
    """What StageRunner.run() leaves.

    Attributes:
        model: the final model (None when the run diverged).
        records: one StageRecord per stage finished or run (none for the
            stages after one that diverged).
        diverged: why the run diverged (stage, epoch, batch), else None.
        strategy: the strategy the final model was built under (None when
            the run diverged).
    """
    model: Optional[tf_keras.Model]
    records: list[StageRecord]
    diverged: Optional[str] = None
    strategy: Optional[tf.distribute.Strategy] = None


class StageRunner:
    """Runs `stages` for one run (see the module docstring).

    `fit` is the caller's: it trains the compiled model over the stage's
    epochs with the given callbacks (the run's data, validation and
    verbosity live there).

    Args:
        stages: the run's stages, in order (stages.check_stages has passed).
        config: the run's hyperparameters.
        strategy: the run's strategy.
        steps_per_epoch: training steps in one epoch.
        global_batch: training examples per step, over all replicas and
            workers.
        fit: called as fit(model, context, callbacks), with the stage's
            StageContext.
        validator: called as validator(model, strategy); returns a
            function of no arguments that returns {"loss", "accuracy"} on
            the validation split.
        start_epoch: the epoch the first stage starts at, 0-based (a
            continued Hyperband trial's predecessor's epochs).
    """

    def __init__(self, *, stages: list[Stage], config: dict, strategy: tf.distribute.Strategy,
                 steps_per_epoch: int, global_batch: int, fit: Callable, validator: Callable,
                 start_epoch: int = 0):
        self.stages = stages
        self.config = config
        self.strategy = strategy
        # Set by attach() once the run folder is claimed (contexts, for the
        # stages' checks, are needed before).
        self.run_dir: Optional[pathlib.Path] = None
        self.write_dir: Optional[pathlib.Path] = None
        self.steps_per_epoch = steps_per_epoch
        self.global_batch = global_batch
        self._fit = fit
        self._validator = validator  # (model, strategy) -> () -> {"loss", "accuracy"}
        self.start_epoch = start_epoch

    def attach(self, run_dir: pathlib.Path, write_dir: pathlib.Path) -> None:
        """Gives the runner its folders, once the run folder is claimed.

        Args:
            run_dir: the run folder.
            write_dir: the folder this process writes to (the run folder,
                or workertemp_<i>/ on a cluster's other workers).
        """
        self.run_dir, self.write_dir = pathlib.Path(run_dir), pathlib.Path(write_dir)

    # -- layout ------------------------------------------------------------
    def stage_dir(self, stage: Stage) -> pathlib.Path:
        """Where a finished stage's result is kept.

        Args:
            stage: one of the run's stages.

        Returns:
            <write_dir>/stages/<stage name>.
        """
        return self.write_dir / "stages" / stage.name

    def backup_dir(self, stage: Stage) -> pathlib.Path:
        """Where what resuming a stage needs is written while it trains.

        Args:
            stage: one of the run's stages.

        Returns:
            <write_dir>/backup/<stage name>.
        """
        return self.write_dir / "backup" / stage.name

    def keras_backup_dir(self, stage: Stage) -> pathlib.Path:
        """BackupAndRestore's folder for a stage, the same on every worker.

        Args:
            stage: one of the run's stages.

        Returns:
            <run_dir>/backup/<stage name>/keras.
        """
        # tf_keras' BackupAndRestore wants the chief's path on every worker
        # (the others write a temporary copy beside it and delete it).
        return self.run_dir / "backup" / stage.name / "keras"

    def done(self, stage: Stage) -> Optional[dict]:
        """A finished stage's record, read from its done.json.

        Args:
            stage: one of the run's stages.

        Returns:
            The StageRecord as a dict; None where done.json is missing or
            cannot be read.
        """
        path = self.stage_dir(stage) / "done.json"
        if not path.exists():
            return None
        try:
            return files.read_json(path)
        except (OSError, ValueError):
            return None

    def context(self, index: int, strategy=None) -> StageContext:
        """What stage `index`'s hooks see.

        Its first epoch is start_epoch plus the epochs of the stages before
        it; before attach(), its log_dir is the relative path "logs".

        Args:
            index: the stage's index in `stages`.
            strategy: the strategy it runs under (default: the run's).

        Returns:
            The stage's StageContext.
        """
        stage = self.stages[index]
        first = self.start_epoch + sum(s.epochs for s in self.stages[:index])
        return StageContext(stage=stage.name, config=self.config,
                            strategy=strategy or self.strategy,
                            steps_per_epoch=self.steps_per_epoch, epochs=stage.epochs,
                            first_epoch=first,
                            log_dir=(self.write_dir or pathlib.Path(".")) / "logs")

    # -- precision ---------------------------------------------------------
    @contextlib.contextmanager
    def _precision(self, stage: Stage):
        if not stage.float32:
            yield
            return
        previous = tf_keras.mixed_precision.global_policy().name
        tf_keras.mixed_precision.set_global_policy("float32")
        try:
            yield
        finally:
            tf_keras.mixed_precision.set_global_policy(previous)

    # -- restoring finished stages ----------------------------------------
    def _strategy_of(self, record: dict) -> tf.distribute.Strategy:
        if record.get("strategy") == "DefaultStrategy":
            return tf.distribute.get_strategy()
        return self.strategy

    def restore(self, index: int, initial: Callable[[], tf_keras.Model],
                strategy: Optional[tf.distribute.Strategy] = None) -> tf_keras.Model:
        """A fresh copy of stage `index`'s result, read from disk.

        Read from disk so that no later stage can change it. A stage kept
        as "weights" is rebuilt by restoring the stage before, applying this
        stage's transforms (float32, on_start, on_end) and loading its
        weights; "model" and "h5" are loaded within the stage's load_scope.

        Args:
            index: the stage's index in `stages`; -1: the initial model.
            initial: builds the initial model (called under `strategy`'s
                scope).
            strategy: the strategy to build under (default: the one the
                stage ran under, by its done.json; the run's for -1).

        Returns:
            The model.
        """
        if index < 0:
            with (strategy or self.strategy).scope():
                return initial()
        stage = self.stages[index]
        strategy = strategy or self._strategy_of(self.done(stage) or {})
        folder = self.stage_dir(stage)
        with self._precision(stage), strategy.scope():
            if stage.keep != "weights":
                return saved.load_model_file(folder / _model_file(stage),
                                             "h5" if stage.keep == "h5" else "keras",
                                             scope=stage.load_scope)
            model = self._transformed(self.restore(index - 1, initial, strategy), index,
                                      strategy)
            model.load_weights(str(folder / "weights")).expect_partial()
            return model

    def _transformed(self, model, index: int, strategy) -> tf_keras.Model:
        stage, context = self.stages[index], self.context(index, strategy)
        if stage.float32:
            model = precision.as_float32(model)
        if stage.on_start:
            model = stage.on_start(model, context)
        if stage.on_end:
            model = stage.on_end(model, context)
        return model

    def _keep(self, stage: Stage, model: tf_keras.Model, record: StageRecord) -> None:
        folder = self.stage_dir(stage)
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        if stage.keep != "weights":
            model.save(folder / _model_file(stage))
        else:
            model.save_weights(str(folder / "weights"))
        # The marker comes last: a stage is done only once its result is whole.
        files.write_json_atomic(folder / "done.json", record.as_dict())
        self.drop_backup(stage)

    def drop_backup(self, stage: Stage) -> None:
        """Deletes what resuming `stage` needed, once its result is kept.

        The Keras backup folder is the chief's on every worker, and the other
        workers' temporary copies sit beside its "chief" folder: a worker that
        is still writing its last epoch's copy must not lose it to a faster
        chief, so only the chief's own "chief" folder goes here, and the rest
        of backup/ when the run finishes (after the final evaluation, which
        every worker joins).

        Args:
            stage: the finished stage (or one restarted under the default
                strategy).
        """
        folder, keras_dir = self.backup_dir(stage), self.keras_backup_dir(stage)
        if keras_dir.parent == folder and folder.exists():
            for child in folder.iterdir():
                if child.is_dir() and child != keras_dir:
                    shutil.rmtree(child, ignore_errors=True)
                elif not child.is_dir():
                    child.unlink(missing_ok=True)
        else:
            shutil.rmtree(folder, ignore_errors=True)
        if strategy_lib.is_chief(self.strategy):
            shutil.rmtree(keras_dir / "chief", ignore_errors=True)

    # -- running -----------------------------------------------------------
    def run(self, initial: Callable[[], tf_keras.Model]) -> Outcome:
        """Trains the stages not yet done; returns the outcome.

        Stages finished (done.json) in an unbroken prefix are not trained
        again: the first stage not done starts from a fresh copy of the
        previous one's result and continues from its backup, if any. A stage
        that fails under the run's strategy with one of FALLBACK_ERRORS and
        declares fallback_to_default_strategy is trained again from the
        start under the default strategy (never the first stage).

        Args:
            initial: builds the initial model; called under the strategy's
                scope.

        Returns:
            The Outcome: the final model and its strategy, and a
            StageRecord per stage finished or run; when a stage diverged,
            which stops the run, no model and why.
        """
        records: list[StageRecord] = []
        model, model_strategy = None, self.strategy
        finished = [self.done(s) is not None for s in self.stages]
        # Only a prefix of finished stages counts: a marker after a gap is stale.
        prefix = 0
        while prefix < len(self.stages) and finished[prefix]:
            prefix += 1
        for index, stage in enumerate(self.stages):
            context = self.context(index)
            planned_last = context.first_epoch + stage.epochs - 1
            if index < prefix:
                record = self.done(stage)
                logging.info("Stage %s already finished (epochs %d-%d)", stage.name,
                             context.first_epoch + 1, planned_last + 1)
                records.append(StageRecord(**record))
                continue
            if model is None:
                model = self.restore(index - 1, initial)
            model, model_strategy, record, diverged = self._run_stage(index, model, initial)
            records.append(record)
            if diverged:
                return Outcome(None, records, diverged=f"stage {stage.name}: {diverged}")
            self._keep(stage, model, record)
        if model is None:  # every stage was done: the final one from disk
            model = self.restore(len(self.stages) - 1, initial)
            model_strategy = self._strategy_of(self.done(self.stages[-1]) or {})
        return Outcome(model, records, strategy=model_strategy)

    def _run_stage(self, index: int, model, initial):
        stage = self.stages[index]
        try:
            return self._train(index, model, self.strategy)
        except FALLBACK_ERRORS as e:
            default = tf.distribute.get_strategy()
            if not stage.fallback_to_default_strategy or self.strategy is default or not index:
                raise
            logging.warning("Stage %s cannot run under %s (%s: %s); running it under the "
                            "default strategy", stage.name,
                            strategy_lib.strategy_name(self.strategy), type(e).__name__,
                            str(e).strip().splitlines()[0] if str(e).strip() else "")
            self.drop_backup(stage)
            # A fresh copy of the stage's input, under the default strategy.
            return self._train(index, self.restore(index - 1, initial, default), default)

    def _train(self, index: int, model, strategy):
        stage = self.stages[index]
        context = self.context(index, strategy)
        end = context.first_epoch + stage.epochs
        with self._precision(stage), strategy.scope():
            if stage.float32:
                model = precision.as_float32(model)
            if stage.on_start:
                model = stage.on_start(model, context)
            if stage.epochs > 0:
                optimizers.compile_model(model, self.config, stage.learning_rate, context.steps,
                                      speed_levers=stage.speed_levers)
        name = strategy_lib.strategy_name(strategy)
        record = StageRecord(stage.name, context.first_epoch, end - 1, None,
                             stage.learning_rate, name)
        diverged = None
        if stage.epochs > 0:
            if len(self.stages) > 1:
                logging.info("Stage %s: epochs %d-%d, learning rate %g, %d trainable weights%s",
                             stage.name, context.first_epoch + 1, end, stage.learning_rate,
                             len(model.trainable_weights),
                             "" if strategy is self.strategy else f", under {name}")
            callback_lib.check_backup(self.keras_backup_dir(stage), self.run_dir)
            try:
                self.backup_dir(stage).mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise files.os_error(e, "create the backup folder") from None
            guard = callback_lib.DivergenceGuard()
            extra = stage.callbacks(context) if stage.callbacks else []
            if len(self.stages) > 1:  # Keras counts the run's epochs ("Epoch 6/9")
                extra = [tf_keras.callbacks.LambdaCallback(
                    on_epoch_begin=lambda epoch, logs: logging.info(
                        "Stage %s (%d of %d): epoch %d of %d", stage.name, index + 1,
                        len(self.stages), epoch - context.first_epoch + 1, stage.epochs))] + extra
            callbacks, early = callback_lib.stage_callbacks(
                write_dir=self.write_dir, backup_dir=self.backup_dir(stage),
                keras_backup_dir=self.keras_backup_dir(stage), config=self.config,
                global_batch=self.global_batch,
                validate=self._validator(model, strategy), stage_first_epoch=context.first_epoch,
                stage_name=stage.name, guard=guard, extra=extra)
            with self._precision(stage):
                self._fit(model, context, callbacks)
            diverged = guard.diverged
            trained = [r["epoch"] for r in files.read_history(self.write_dir)
                       if context.first_epoch <= r["epoch"] < end]
            record.last_epoch = max(trained) if trained else None
            if early is not None:
                record.stopped_early = early.stopped_epoch > 0
                record.best_epoch = early.best_epoch if early.best_weights is not None else None
        if not diverged and stage.on_end:
            with self._precision(stage), strategy.scope():
                model = stage.on_end(model, context)
        return model, strategy, record, diverged


def stage_models(runner: StageRunner, outcome: Outcome,
                 initial: Callable[[], tf_keras.Model]) -> dict[str, Any]:
    """Stage name -> a loader of that stage's final model.

    Args:
        runner: the runner that ran the stages.
        outcome: what runner.run() returned.
        initial: builds the initial model (for StageRunner.restore).

    Returns:
        {stage name: a function of no arguments returning a model}: the
        last stage's returns the outcome's model itself; earlier ones read
        a fresh copy from disk (StageRunner.restore) at every call.
    """
    loaders: dict[str, Callable[[], tf_keras.Model]] = {}
    for index, stage in enumerate(runner.stages):
        if index == len(runner.stages) - 1:
            loaders[stage.name] = lambda: outcome.model
        else:
            loaders[stage.name] = (lambda i=index: runner.restore(i, initial))
    return loaders
