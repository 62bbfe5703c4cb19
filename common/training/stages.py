"""Stages: what an experiment declares, and what its hooks see.

A stage is a stretch of training with its own epochs and learning rate, a
transform of the model when it starts and when it ends (unfreeze a base,
prune, strip the pruning wrappers, quantize), its own callbacks, whether
the speed levers apply, how its result is kept for resuming, and whether it
may fall back to the default strategy where a library (TFMOT) cannot run
under the run's. Stages run back to back in one run: one history, one
TensorBoard timeline, epochs numbered across stages.

Resume layout, in the folder a process writes to:

    backup/<stage>/    while stage <stage> trains: Keras' BackupAndRestore
                       state (keras/), the last epoch's logs, early stopping;
                       once it finished, only keras/ may stay (other workers'
                       copies), until the run ends
    stages/<stage>/    once it finished: done.json and its model (model.keras)
                       or weights (a TensorFlow checkpoint)

Killed in stage k, the same command restores stage k-1's result, applies
stage k's on_start again and continues stage k from its backup: finished
stages are never trained again. The runner is training/stage_runner.py.
"""

import dataclasses
import pathlib
from typing import Callable, ContextManager, Optional

import tensorflow as tf
import tf_keras

from common.data.splits import Split
from common.errors import UserError

KEEP_FORMS = ("weights", "model", "h5")
@dataclasses.dataclass
class StageContext:
    """What a stage's hooks see.

    Attributes:
        stage: the stage's name.
        config: the run's hyperparameters.
        strategy: the strategy the stage runs under (the default one where
            it fell back to it).
        steps_per_epoch: training steps in one epoch.
        epochs: the stage's epochs.
        first_epoch: the stage's first epoch, 0-based, counted across the
            run's stages (and from a continued Hyperband trial's start).
        log_dir: the TensorBoard folder, logs/ of the folder this process
            writes to (the relative path "logs" before the run folder exists).
    """
    stage: str
    config: dict
    strategy: tf.distribute.Strategy
    steps_per_epoch: int
    epochs: int
    first_epoch: int
    log_dir: pathlib.Path

    @property
    def steps(self) -> int:
        """Training steps the stage runs (epochs * steps_per_epoch)."""
        return self.epochs * self.steps_per_epoch


ModelHook = Callable[[tf_keras.Model, StageContext], tf_keras.Model]


@dataclasses.dataclass
class Stage:
    """One stretch of training.

    Attributes:
        name: the stage's name, an identifier unique among the run's stages
            (check_stages); it names the stage's folders.
        epochs: epochs the stage trains (0 or more; with 0, only on_start
            and on_end apply).
        learning_rate: the stage's learning rate (the initial one under a
            cosine schedule, which spans the stage's steps).
        on_start: on_start(model, context) -> model, applied before the
            stage compiles (it may return a new model: prune_low_magnitude,
            quantize_apply).
        on_end: on_end(model, context) -> model, applied after it trained
            (strip_pruning).
        callbacks: callbacks(context) -> list, extra Keras callbacks for
            this stage.
        speed_levers: whether config's steps_per_execution and jit_compile
            apply.
        keep: how the finished stage is kept for resuming: "weights"
            (restored by replaying on_start/on_end on the stage before and
            loading them), "model" (a whole .keras file) or "h5" (a whole
            HDF5 file, for models .keras cannot reload, such as TFMOT's QAT
            models); one of KEEP_FORMS.
        load_scope: load_scope() -> a context manager within which a "model"
            or "h5" stage is loaded (the custom objects loading needs).
        fallback_to_default_strategy: where on_start, compile, fit or on_end
            fails under the run's strategy (one of stage_runner.FALLBACK_ERRORS),
            the stage runs under the default one instead, from the start
            (never the first stage).
        float32: the stage runs in float32 whatever config's mixed_precision.
        check: check(context), which raises UserError before any run folder
            exists.
    """
    name: str
    epochs: int
    learning_rate: float
    on_start: Optional[ModelHook] = None
    on_end: Optional[ModelHook] = None
    callbacks: Optional[Callable[[StageContext], list]] = None
    speed_levers: bool = True
    keep: str = "weights"
    load_scope: Optional[Callable[[], ContextManager]] = None
    fallback_to_default_strategy: bool = False
    float32: bool = False
    check: Optional[Callable[[StageContext], None]] = None


def check_stages(stages: list[Stage]) -> None:
    """Checks that a list of stages can run.

    Args:
        stages: the experiment's stages, in order.

    Raises:
        UserError: no stages; a name that is not an identifier, or two
            stages of one name; negative epochs; a keep not in KEEP_FORMS
            (the message lists them); no stage with epochs.
    """
    if not stages:
        raise UserError("the experiment declares no stages")
    names = [s.name for s in stages]
    for stage in stages:
        if not stage.name.isidentifier():
            raise UserError(f"stage name {stage.name!r} must be an identifier")
        if names.count(stage.name) > 1:
            raise UserError(f"two stages are named {stage.name!r}")
        if stage.epochs < 0:
            raise UserError(f"stage {stage.name!r} has {stage.epochs} epochs")
        if stage.keep not in KEEP_FORMS:
            raise UserError(f"stage {stage.name!r}: keep={stage.keep!r}; choose one of: "
                            f"{', '.join(KEEP_FORMS)}")
    if sum(s.epochs for s in stages) <= 0:
        raise UserError("nothing to train: every stage has 0 epochs (set epochs >= 1)")


@dataclasses.dataclass
class StageRecord:
    """What one stage did: for metrics.json and for resuming.

    Epochs are 0-based and counted across the run's stages.

    Attributes:
        name: the stage's name.
        first_epoch: the stage's first epoch.
        planned_last_epoch: the last epoch it would train,
            first_epoch + epochs - 1.
        last_epoch: the last epoch really trained, by history.csv (None:
            none).
        learning_rate: the stage's learning rate.
        strategy: the name of the strategy it ran under
            (strategy.strategy_name: "DefaultStrategy" where it fell back).
        stopped_early: whether early stopping ended it.
        best_epoch: early stopping's best epoch, whose weights it kept
            (None without early stopping or best weights).
    """
    name: str
    first_epoch: int
    planned_last_epoch: int
    last_epoch: Optional[int]
    learning_rate: float
    strategy: str
    stopped_early: bool = False
    best_epoch: Optional[int] = None

    def as_dict(self) -> dict:
        """The record as a dict, as done.json and metrics.json hold it.

        Returns:
            {field name: value} for every field (dataclasses.asdict).
        """
        return dataclasses.asdict(self)


@dataclasses.dataclass
class FinishContext:
    """What an experiment's finish(context) hook sees.

    finish(context) runs after the last stage and the test evaluation. It
    returns a dict that joins metrics.json; its "test" ({"accuracy",
    "loss", "examples"}) replaces the headline test figures, and its
    "models" (runs.saved.declare entries) join the run's declared models.

    Attributes:
        config: the run's hyperparameters.
        strategy: the strategy the final model was built under.
        write_dir: the folder the process writes to.
        test_split: the test split, a data.splits.Split reader of (image
            uint8 [H, W, C], label int64 []) examples (data.pipeline.batches()
            reads it a batch at a time).
        test_dataset: the test split as evaluation batches
            (data.pipeline.eval_stream).
        model: the final model.
        stage_models: {stage name: a loader of that stage's final model}
            (stage_runner.stage_models): fresh copies from disk, but the
            last stage's, which is `model`.
    """
    config: dict
    strategy: tf.distribute.Strategy
    write_dir: pathlib.Path
    test_split: Split
    test_dataset: tf.data.Dataset
    model: tf_keras.Model
    stage_models: dict
