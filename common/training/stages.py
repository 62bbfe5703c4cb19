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

from common.errors import UserError

KEEP_FORMS = ("weights", "model", "h5")
@dataclasses.dataclass
class StageContext:
    """What a stage's hooks see."""
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

    on_start(model, context) -> model: applied before the stage compiles
        (it may return a new model: prune_low_magnitude, quantize_apply);
    on_end(model, context) -> model: applied after it trained (strip_pruning);
    callbacks(context) -> list: extra Keras callbacks for this stage;
    speed_levers: whether config's steps_per_execution and jit_compile apply;
    keep: how the finished stage is kept for resuming: "weights" (restored by
        replaying on_start/on_end on the stage before and loading them),
        "model" (a whole .keras file) or "h5" (a whole HDF5 file, for models
        .keras cannot reload, such as TFMOT's QAT models), loaded within
        load_scope() (the custom objects loading needs);
    fallback_to_default_strategy: where on_start, compile or fit fails under
        the run's strategy, the stage runs under the default one instead;
    float32: the stage runs in float32 whatever config's mixed_precision;
    check(context): raises UserError before any run folder exists.
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
    """Raises UserError for a list of stages that cannot run."""
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
    """What one stage did: for metrics.json and for resuming."""
    name: str
    first_epoch: int
    planned_last_epoch: int
    last_epoch: Optional[int]   # the last epoch really trained (None: none)
    learning_rate: float
    strategy: str
    stopped_early: bool = False
    best_epoch: Optional[int] = None

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class FinishContext:
    """What an experiment's finish(context) hook sees, after the last stage
    and the test evaluation: the final model, a loader of each stage's final
    model (fresh copies from disk, but the last stage's), the test split
    (unbatched uint8 images, int64 labels, and as evaluation batches) and
    the folder the process writes to. finish() returns a dict that joins
    metrics.json; its "test" ({"accuracy", "loss", "examples"}) replaces the
    headline test figures, and its "models" (runs.saved.declare entries)
    join the run's declared models."""
    config: dict
    strategy: tf.distribute.Strategy
    write_dir: pathlib.Path
    test_split: tf.data.Dataset
    test_dataset: tf.data.Dataset
    model: tf_keras.Model
    stage_models: dict
