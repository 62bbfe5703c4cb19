"""What launch.py runs: one mode of one experiment.

`run(options)` checks what it can before TensorFlow does any work (names,
hyperparameters, data, the model), creates the strategy first (TensorFlow
requires it), then hands over to the mode: `train_run` here (one run of the
experiment's stages), `saved_runs.evaluate_run` (--mode=eval),
`tuning.sweep` (--mode=tune), `deploy.export_run` (--mode=export) and
`predict.predict_run` (--mode=predict).
"""

import dataclasses
import functools
import pathlib
from typing import Any

from absl import logging
import tensorflow as tf
import tf_keras

import experiments
from common import (choices, clusters, data, evaluation, hparams, results, saved_runs, slurm, speed,
                    stage_runner, stages as stage_lib, strategy as strategy_lib)
from common.errors import UserError
from common.options import HPARAM_FLAGS, RunOptions
from common.run_folder import RunFolder, write_test_scalars


def run(options: RunOptions) -> dict[str, Any]:
    """Runs options.mode; returns what it wrote (metrics.json, eval.json,
    best_hparams.json, ...). Raises UserError for anything a user can fix."""
    if options.mode not in choices.MODES:
        raise UserError(f"unknown --mode={options.mode!r}; choose one of: "
                        f"{', '.join(choices.MODES)}")
    options = slurm.slurm_run_defaults(options)  # inside Slurm: slurm-<job id>
    if options.run_name is not None:
        results.check_name("run_name", options.run_name)
    if options.sweep_name is not None:
        results.check_name("sweep_name", options.sweep_name)
    if options.mode in ("eval", "export", "predict") and not options.run_name:
        raise UserError(f"--mode={options.mode} needs --run_name of a finished run")
    experiment = experiments.get(options.experiment)
    config = resolve_config(experiment, options)
    clusters.check_cluster_options(options)
    # The strategy comes before any other TensorFlow op.
    strategy_lib.configure_cpu_devices(options.num_cpu_devices)
    strategy = strategy_lib.get_strategy(options.strategy, tpu=options.tpu,
                                         device=options.device,
                                         cluster_timeout=options.cluster_timeout)
    speed.check_hardware(config)
    strategy_lib.check_global_batch(config["batch_size"], strategy)
    if options.mode == "eval":
        return saved_runs.evaluate_run(options, config, strategy)
    if options.mode == "export":
        from common import deploy
        return deploy.export_run(options, config)
    if options.mode == "predict":
        from common import predict
        return predict.predict_run(options, config)
    if options.mode == "tune":
        from common import tuning
        return tuning.sweep(experiment, options, config, strategy)
    return train_run(experiment, options, config, strategy)


def resolve_config(experiment, options: RunOptions) -> dict[str, Any]:
    """The experiment's hyperparameters: hparams.SHARED and its get_config(),
    then --hparams_file, then --hparams, then the dedicated flags (--epochs,
    --batch_size, ...); every value checked against its valid range."""
    specs = hparams.specs_of(experiment.get_config())
    config = {name: spec.default for name, spec in specs.items()}
    if options.hparams_file:
        config = hparams.override(config, specs, hparams.read_file(options.hparams_file),
                                  source="--hparams_file")
    config = hparams.override(config, specs, options.hparams)
    for name in HPARAM_FLAGS:
        value = getattr(options, name)
        if value is None:
            continue
        if name not in specs:
            raise UserError(f"experiment {options.experiment!r} has no {name!r} "
                            f"hyperparameter, so --{name} does not apply; its "
                            f"hyperparameters: {', '.join(sorted(specs))}")
        config[name] = value
    hparams.check_all(config, specs)
    if not config["dataset"].strip():
        raise UserError("--dataset is empty; name a dataset (mnist, fashion_mnist, cifar10, "
                        "image_folder or another TFDS name)")
    return config


def stages_of(experiment, config: dict) -> list[stage_lib.Stage]:
    """The experiment's stages (its `stages` hook), or one stage of `epochs`
    at `learning_rate`. In a multi-stage experiment, epochs=N (--epochs)
    runs N epochs in every training stage."""
    declare = experiments.hook(experiment, "stages")
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


def data_identity(config: dict, options: RunOptions, splits: data.Splits) -> dict:
    """What a resumed run must find again: the dataset and where it came from."""
    data_dir = (str(pathlib.Path(options.data_dir).expanduser().resolve())
                if options.data_dir else None)
    return {"dataset": config["dataset"], "data_dir": data_dir, "source": splits.source,
            **({"layout": splits.report["layout"]} if splits.report else {})}


def train_run(experiment, options: RunOptions, config: dict,
              strategy: tf.distribute.Strategy) -> dict[str, Any]:
    """Trains one run of `config` under `strategy` (created by the caller)
    through the experiment's stages; returns what metrics.json holds."""
    if config["deterministic"]:
        tf.config.experimental.enable_op_determinism()
    tf_keras.utils.set_random_seed(options.seed)
    with speed.precision(config):
        return _train(experiment, options, config, strategy)


def _train(experiment, options: RunOptions, config: dict,
           strategy: tf.distribute.Strategy) -> dict[str, Any]:
    stages = stages_of(experiment, config)
    splits = data.load(config["dataset"], data_dir=options.data_dir,
                       validation_fraction=config["validation_fraction"], hparams=config)
    augment = experiments.hook(experiment, "augment")
    pipes = data.pipelines(
        splits, config["batch_size"], num_workers=clusters.num_workers(strategy),
        seed=options.seed, deterministic=config["deterministic"],
        augment=functools.partial(_augment, augment, config) if augment else None)
    stage_run = stage_runner.StageRunner(
        stages=stages, config=config, strategy=strategy, steps_per_epoch=pipes.steps_per_epoch,
        global_batch=config["batch_size"], start_epoch=options.initial_epoch,
        fit=functools.partial(_fit, pipes.train, options.verbose),
        validator=lambda model, s: functools.partial(evaluation.Evaluator(model, s),
                                                     pipes.validation))
    for index, stage in enumerate(stages):
        if stage.check:
            stage.check(stage_run.context(index))
    build = functools.partial(_build_model, experiment, config, splits, options)
    # Built before the run folder exists, so that a model that cannot be
    # built (weights missing, no network) leaves no folder behind.
    with strategy.scope():
        first = [build()]
    folder = RunFolder.claim(options.experiment, options, config, strategy,
                             data_identity(config, options, splits),
                             {"class_names": list(splits.class_names),
                              "image_shape": list(splits.image_shape),
                              **({"data_report": splits.report["summary"]}
                                 if splits.report else {})})
    try:
        if splits.report and folder.is_chief:  # image_folder's cleaning pass
            results.write_json_atomic(folder.run_dir / "data_report.json", splits.report)
        stage_run.attach(folder.run_dir, folder.write_dir)
        outcome = stage_run.run(lambda: first.pop() if first else build())
        records = [r.as_dict() for r in outcome.records]
        if outcome.diverged:
            folder.fail(f"training diverged: {outcome.diverged}", {"stages_trained": records})
        return _finish(experiment, folder, stage_run, outcome, pipes, records, build)
    finally:
        folder.release()


def _augment(augment, config, image, label):
    return augment(image, label, config)


def _build_model(experiment, config, splits, options) -> tf_keras.Model:
    model = experiment.build_model(config, splits.image_shape, splits.num_classes)
    if options.warm_start:  # a Hyperband trial continued from its predecessor
        previous = saved_runs.load_keras_model(pathlib.Path(options.warm_start))
        model.set_weights(previous.get_weights())
    return model


def _fit(train_ds, verbose: int, model, context: stage_lib.StageContext, callbacks) -> None:
    model.fit(train_ds, initial_epoch=context.first_epoch,
              epochs=context.first_epoch + context.epochs, steps_per_epoch=None,
              callbacks=callbacks, verbose=verbose)


def _finish(experiment, folder: RunFolder, stage_run, outcome, pipes, records,
            build) -> dict[str, Any]:
    """Scores the final model on the test split, saves it, runs the
    experiment's finishing step, writes metrics.json."""
    model = outcome.model
    test = evaluation.Evaluator(model, outcome.strategy)(pipes.test)
    checksum = strategy_lib.weights_checksum(model)
    logging.info("Final weights checksum: %s", checksum)
    model_path = saved_runs.save_final_model(model, folder.write_dir, stage_run.stages[-1].keep)
    history = results.read_history(folder.write_dir)
    by_epoch = {row["epoch"]: row for row in history}
    for record in records:
        last = by_epoch.get(record["best_epoch"] if record.get("best_epoch") is not None
                            else record["last_epoch"], {})
        record["final_validation"] = {k: v for k, v in last.items() if k.startswith("val_")}
    extra = {}
    finish = experiments.hook(experiment, "finish")
    if finish is not None:
        extra = finish(stage_lib.FinishContext(
            config=folder.config, strategy=outcome.strategy, write_dir=folder.write_dir,
            test_split=pipes.splits.test, test_dataset=pipes.test, model=model,
            stage_models=stage_runner.stage_models(stage_run, outcome, build)))
    test = {**test, **extra.pop("test", {})}
    write_test_scalars(folder.write_dir, len(history), test)
    stopped = [r for r in records if r.get("stopped_early")]
    models = [saved_runs.declare(folder.write_dir, "model", model_path,
                                 stage_run.stages[-1].load_scope), *extra.pop("models", [])]
    # export/: SavedModel for serving, float TFLite, labels.txt. A sweep's
    # trials skip it: the best configuration is retrained from best_hparams.json.
    if folder.is_chief and not folder.options.run_parent:
        from common import deploy
        served = deploy.export_after_training(folder.write_dir, models[0],
                                              pipes.splits.class_names, pipes.splits.image_shape)
        models += served.pop("models")
        extra.update(served)
    metrics = {
        "test_accuracy": test["accuracy"], "test_loss": test["loss"],
        "num_test_examples": test["examples"],
        "num_train_examples": pipes.splits.num_train,
        "num_validation_examples": pipes.splits.num_validation,
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
