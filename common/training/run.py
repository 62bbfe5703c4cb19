"""One training run of an experiment: its data, its stages, the final test
evaluation, the saved model and metrics.json.

`train_run()` is what `--mode=train` runs and what every sweep trial runs
(modes/train.py, modes/tune.py). The experiment's module is passed in; its
optional hooks (stages, augment, finish) are read as attributes, which the
contract in experiments/__init__.py has checked.
"""

import dataclasses
import functools
import pathlib
from typing import Any, Callable, Optional

from absl import logging
import tensorflow as tf
import tf_keras

from common.config.options import RunOptions, SweepTrial
from common.data import image_folder, memory, pipeline, sources
from common.data.splits import Pipelines, Splits
from common.distribute import clusters, strategy as strategy_lib
from common.runs import files, saved
from common.runs.folder import RunFolder, check_files_before_loading, write_test_scalars
from common.training import evaluation, precision, stage_runner, stages as stage_lib

# What export() is given and returns: see train_run.
Export = Callable[[pathlib.Path, dict, tuple, tuple, Any], dict]


def _hook(experiment, name: str):
    return getattr(experiment, name, None)


def stages_of(experiment, config: dict) -> list[stage_lib.Stage]:
    """The experiment's stages (its `stages` hook), or one stage of `epochs`
    at `learning_rate`. In a multi-stage experiment, epochs=N (--epochs)
    runs N epochs in every training stage.

    Args:
        experiment: the experiment's module.
        config: the run's resolved hyperparameters.

    Returns:
        The stages, in the order they run.

    Raises:
        UserError: stages that cannot run (stages.check_stages).
    """
    declare = _hook(experiment, "stages")
    if declare is None:
        stages = [stage_lib.Stage("train", config["epochs"], config["learning_rate"])]
    else:
        stages = list(declare(config))
        if config["epochs"] > 0 and len(stages) > 1:
            training = [s.name for s in stages if s.epochs > 0]
            stages = [dataclasses.replace(s, epochs=config["epochs"]) if s.epochs > 0 else s
                      for s in stages]
            logging.info("epochs=%d: every training stage (%s) runs %d epoch(s)",
                         config["epochs"], ", ".join(training), config["epochs"])
    stage_lib.check_stages(stages)
    return stages


def data_identity(config: dict, options: RunOptions, splits: Splits) -> dict:
    """What a resumed run must find again: the dataset and where it came from.

    Args:
        config: the run's hyperparameters (its dataset).
        options: the command's flags (its --data_dir).
        splits: the loaded data (its source and, for image folders, layout).

    Returns:
        {"dataset", "data_dir" (absolute, or None), "source"[, "layout",
        "file_set" (an image folder's files: data.image_folder.file_set())]}.
    """
    data_dir = (str(pathlib.Path(options.data_dir).expanduser().resolve())
                if options.data_dir else None)
    return {"dataset": config["dataset"], "data_dir": data_dir, "source": splits.source,
            **({"layout": splits.report["layout"]} if splits.report else {}),
            **({"file_set": splits.file_set} if splits.file_set else {})}


def load_data(config: dict, data_dir: Optional[str]) -> Splits:
    """The run's dataset, loaded with the hyperparameters the data layer reads.

    Args:
        config: hyperparameters (dataset, validation_fraction and
            image_folder's image_size, image_channels, test_fraction).
        data_dir: --data_dir, or None.

    Returns:
        The dataset's Splits.

    Raises:
        UserError: see data.sources.load.
    """
    return sources.load(config["dataset"], data_dir=data_dir,
                        validation_fraction=config["validation_fraction"],
                        image_size=config["image_size"],
                        image_channels=config["image_channels"],
                        test_fraction=config["test_fraction"])


def train_run(experiment, options: RunOptions, config: dict,
              strategy: tf.distribute.Strategy, *, trial: Optional[SweepTrial] = None,
              export: Optional[Export] = None) -> dict[str, Any]:
    """Trains one run of `config` under `strategy` through the experiment's
    stages, scores it on the test split and writes metrics.json.

    Args:
        experiment: the experiment's module (experiments.get(name)).
        options: the command's flags (run name, data_dir, seed, verbosity).
        config: the resolved hyperparameters (config/resolve.py).
        strategy: the strategy, created by the caller before any other
            TensorFlow op.
        trial: a sweep's trial: where its folder goes, and the run a
            Hyperband trial continues from; None for a plain run.
        export: called by the chief after the model is saved, as
            export(run_dir, model entry, class names, image shape, the last
            stage's load_scope); what it returns joins metrics.json, its
            "models" the declared models.
            None: no serving export (a sweep's trials).

    Returns:
        What metrics.json holds.

    Raises:
        UserError: anything a user can fix (data, stages, the run folder).
        RunFailed: the run diverged; metrics.json records it as failed.
    """
    if config["deterministic"]:
        tf.config.experimental.enable_op_determinism()
    tf_keras.utils.set_random_seed(options.seed)
    with precision.precision(config):
        return _train(experiment, options, config, strategy, trial, export)


def _train(experiment, options: RunOptions, config: dict, strategy: tf.distribute.Strategy,
           trial: Optional[SweepTrial], export: Optional[Export]) -> dict[str, Any]:
    stages = stages_of(experiment, config)
    if trial is None and options.run_name and not options.restart \
            and config["dataset"] == image_folder.DATASET and strategy_lib.is_chief(strategy):
        check_files_before_loading(
            pathlib.Path(options.results_dir) / options.experiment / options.run_name,
            options.data_dir)
    splits = load_data(config, options.data_dir)
    augment = _hook(experiment, "augment")
    pipes = pipeline.pipelines(
        splits, config["batch_size"], num_workers=clusters.num_workers(strategy),
        worker_index=clusters.worker_index(strategy), seed=options.seed,
        deterministic=config["deterministic"],
        augment=functools.partial(_augment, augment, config) if augment else None,
        budget=memory.budget(options.data_memory_budget))
    stage_run = stage_runner.StageRunner(
        stages=stages, config=config, strategy=strategy, steps_per_epoch=pipes.steps_per_epoch,
        global_batch=config["batch_size"],
        start_epoch=trial.initial_epoch if trial else 0,
        fit=functools.partial(_fit, pipes.train, options.verbose),
        validator=lambda model, s: functools.partial(evaluation.Evaluator(model, s),
                                                     pipes.validation))
    for index, stage in enumerate(stages):
        if stage.check:
            stage.check(stage_run.context(index))
    build = functools.partial(_build_model, experiment, config, splits,
                              trial.warm_start if trial else None)
    # Built before the run folder exists, so that a model that cannot be
    # built (weights missing, no network) leaves no folder behind.
    with strategy.scope():
        first = [build()]
    folder = RunFolder.claim(options.experiment, options, config, strategy,
                             data_identity(config, options, splits),
                             {"class_names": list(splits.class_names),
                              "image_shape": list(splits.image_shape),
                              **({"data_report": splits.report["summary"]}
                                 if splits.report else {})}, trial=trial)
    try:
        if splits.report and folder.is_chief:  # image_folder's cleaning pass
            files.write_json_atomic(folder.run_dir / "data_report.json", splits.report)
        stage_run.attach(folder.run_dir, folder.write_dir)
        outcome = stage_run.run(lambda: first.pop() if first else build())
        records = [r.as_dict() for r in outcome.records]
        if outcome.diverged:
            folder.fail(f"training diverged: {outcome.diverged}", {"stages_trained": records})
        return _finish(experiment, folder, stage_run, outcome, pipes, records, build, export)
    finally:
        folder.release()



def _augment(augment, config, image, label):
    return augment(image, label, config)


def _build_model(experiment, config, splits, warm_start: Optional[str]) -> tf_keras.Model:
    model = experiment.build_model(config, splits.image_shape, splits.num_classes)
    if warm_start:  # a Hyperband trial continued from its predecessor
        previous = saved.load_keras_model(pathlib.Path(warm_start),
                                          scope=_hook(experiment, "load_scope"))
        model.set_weights(previous.get_weights())
    return model


def _fit(train_ds, verbose: int, model, context: stage_lib.StageContext, callbacks) -> None:
    model.fit(train_ds, initial_epoch=context.first_epoch,
              epochs=context.first_epoch + context.epochs,
              steps_per_epoch=context.steps_per_epoch, callbacks=callbacks, verbose=verbose)


def _finish(experiment, folder: RunFolder, stage_run, outcome, pipes: Pipelines, records,
            build, export: Optional[Export]) -> dict[str, Any]:
    """Scores the final model on the test split, saves it, runs the
    experiment's finishing step, writes metrics.json."""
    model = outcome.model
    test = evaluation.Evaluator(model, outcome.strategy)(pipes.test)
    checksum = strategy_lib.weights_checksum(model)
    logging.info("Final weights checksum: %s", checksum)
    model_path = saved.save_final_model(model, folder.write_dir, stage_run.stages[-1].keep)
    history = files.read_history(folder.write_dir)
    by_epoch = {row["epoch"]: row for row in history}
    for record in records:
        last = by_epoch.get(record["best_epoch"] if record.get("best_epoch") is not None
                            else record["last_epoch"], {})
        record["final_validation"] = {k: v for k, v in last.items() if k.startswith("val_")}
    extra = {}
    finish = _hook(experiment, "finish")
    if finish is not None:
        extra = finish(stage_lib.FinishContext(
            config=folder.config, strategy=outcome.strategy, write_dir=folder.write_dir,
            test_split=pipes.splits.test, test_dataset=pipes.test, model=model,
            stage_models=stage_runner.stage_models(stage_run, outcome, build)))
    test = {**test, **extra.pop("test", {})}
    write_test_scalars(folder.write_dir, len(history), test)
    stopped = [r for r in records if r.get("stopped_early")]
    models = [saved.declare(folder.write_dir, "model", model_path,
                            stage_run.stages[-1].load_scope), *extra.pop("models", [])]
    # export/ (deploy/serving.py): SavedModel for serving, float TFLite,
    # labels.txt. A sweep's trials pass none: the best configuration is
    # retrained from best_hparams.json.
    if folder.is_chief and export is not None:
        served = export(folder.write_dir, models[0], pipes.splits.class_names,
                        pipes.splits.image_shape, stage_run.stages[-1].load_scope)
        models += served.pop("models")
        extra.update(served)
    metrics = {
        "test_accuracy": test["accuracy"], "test_loss": test["loss"],
        "num_test_examples": test["examples"],
        "num_train_examples": pipes.splits.num_train,
        "num_validation_examples": pipes.splits.num_validation,
        "data_in_memory": pipes.in_memory,
        "stages": records,
        "final_validation": records[-1]["final_validation"],
        "model_path": str(model_path.relative_to(folder.write_dir)),
        "models": models,
        "headline_model": "model",
        "num_parameters": model.count_params(),
        "wall_seconds_total": sum(row.get("wall_seconds") or 0.0 for row in history),
        "weights_checksum": checksum,
        **extra,
    }
    if stopped:
        metrics["stopped_early"] = [{"stage": r["name"], "epoch": r["last_epoch"] + 1,
                                     "best_epoch": r["best_epoch"] + 1} for r in stopped]
    status = "stopped_early" if stopped else "completed"
    payload = folder.finish(status, metrics)
    if folder.is_chief:
        logging.info("Finished %s (%s): test accuracy %.4f, test loss %.4f over %d examples",
                     folder.run_dir, status, test["accuracy"], test["loss"], test["examples"])
    else:
        logging.info("Worker %d finished; test accuracy %.4f (the chief writes metrics)",
                     strategy_lib.task_id(folder.strategy), test["accuracy"])
    return payload
