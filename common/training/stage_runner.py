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
from common.runs import files
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
        records: one StageRecord per stage, finished or not.
        diverged: why the run diverged (stage, epoch, batch), else None.
        strategy: the strategy the final model was built under.
    """
    model: Optional[tf_keras.Model]
    records: list[StageRecord]
    diverged: Optional[str] = None
    strategy: Optional[tf.distribute.Strategy] = None  # the final model's


class StageRunner:
    """Runs `stages` for one run (see the module docstring).

    `fit(model, stage, context, callbacks)` is the caller's: it trains the
    compiled model over the stage's epochs with the given callbacks (the
    run's data, validation and verbosity live there).
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
        """The run folder, and the folder this process writes to (the run
        folder, or workertemp_<i>/ on a cluster's other workers)."""
        self.run_dir, self.write_dir = pathlib.Path(run_dir), pathlib.Path(write_dir)

    # -- layout ------------------------------------------------------------
    def stage_dir(self, stage: Stage) -> pathlib.Path:
        return self.write_dir / "stages" / stage.name

    def backup_dir(self, stage: Stage) -> pathlib.Path:
        return self.write_dir / "backup" / stage.name

    def keras_backup_dir(self, stage: Stage) -> pathlib.Path:
        # tf_keras' BackupAndRestore wants the chief's path on every worker
        # (the others write a temporary copy beside it and delete it).
        return self.run_dir / "backup" / stage.name / "keras"

    def done(self, stage: Stage) -> Optional[dict]:
        path = self.stage_dir(stage) / "done.json"
        if not path.exists():
            return None
        try:
            return files.read_json(path)
        except (OSError, ValueError):
            return None

    def context(self, index: int, strategy=None) -> StageContext:
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
        """A fresh copy of stage `index`'s result (index -1: the initial
        model), read from disk, so no later stage can change it; built under
        `strategy` (default: the one the stage ran under)."""
        if index < 0:
            with (strategy or self.strategy).scope():
                return initial()
        stage = self.stages[index]
        strategy = strategy or self._strategy_of(self.done(stage) or {})
        folder = self.stage_dir(stage)
        with self._precision(stage), strategy.scope():
            if stage.keep != "weights":
                scope = stage.load_scope() if stage.load_scope else contextlib.nullcontext()
                with scope:
                    return tf_keras.models.load_model(folder / _model_file(stage))
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
        every worker joins)."""
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
        """Trains the stages not yet done; returns the outcome."""
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
    """Stage name -> a loader of that stage's final model: the last stage's is
    the outcome's model; earlier ones are read from disk, fresh."""
    loaders: dict[str, Callable[[], tf_keras.Model]] = {}
    for index, stage in enumerate(runner.stages):
        if index == len(runner.stages) - 1:
            loaders[stage.name] = lambda: outcome.model
        else:
            loaders[stage.name] = (lambda i=index: runner.restore(i, initial))
    return loaders
