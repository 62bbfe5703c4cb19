"""--mode=eval: every model a finished run declares, scored again on the test split."""

import math
from typing import Any

from absl import logging
import tensorflow as tf

import experiments
from common.config.options import RunOptions
from common.data import pipeline
from common.deploy import serving, tflite
from common.runs import files, saved
from common.training import evaluation
from common.training.run import load_data


def run(experiment, options: RunOptions, config: dict,
        strategy: tf.distribute.Strategy) -> dict[str, Any]:
    """Scores every model the run --run_name declares (Keras models under
    `strategy`, TFLite files through the interpreter, SavedModels through
    their signature) on the test split of the run's data, unless
    --dataset / --data_dir name other data; writes eval.json.

    Args:
        experiment: the experiment's module (unused: the run's own
            metrics.json says what it holds).
        options: the command's flags (results_dir, run_name, dataset,
            data_dir).
        config: the resolved hyperparameters (batch_size; defaults for
            what the run's config.json lacks).
        strategy: the strategy Keras models are scored under.

    Returns:
        What eval.json holds: {"run", "dataset", "num_test_examples",
        "models": {name: {"loss", "accuracy", "examples"}},
        "recorded_test_accuracy"}.

    Raises:
        UserError: a missing or unfinished run, a damaged file, a model
            that cannot be loaded, data that cannot be loaded.
    """
    run_dir = saved.find_finished(options.results_dir, options.experiment, options.run_name)
    trained = saved.read_config(run_dir)
    recorded = saved.read_metrics(run_dir)
    dataset = options.dataset or trained["hparams"].get("dataset", config["dataset"])
    data_dir = options.data_dir or (trained.get("data") or {}).get("data_dir")
    splits = load_data({**config, **trained["hparams"], "dataset": dataset}, data_dir)
    test_ds = pipeline.eval_stream(splits.test, config["batch_size"])
    scores = {}
    for entry in saved.declared_models(run_dir):
        if entry["format"] in ("keras", "h5"):
            with strategy.scope():
                model = saved.load_entry(run_dir, entry,
                                         scope=experiments.hook(experiment, "load_scope"))
            scores[entry["name"]] = evaluation.Evaluator(model, strategy)(test_ds)
            continue
        path = files.inside(run_dir, entry["path"], f"model {entry['name']!r}")
        if entry["format"] == "tflite":
            scores[entry["name"]] = tflite.tflite_scores(path, pipeline.batches(splits.test))
        else:
            scores[entry["name"]] = serving.saved_model_scores(path,
                                                               pipeline.batches(splits.test))
    payload = {"run": options.run_name, "dataset": dataset,
               "num_test_examples": splits.num_test, "models": scores,
               "recorded_test_accuracy": recorded.get("test_accuracy")}
    files.write_json_atomic(run_dir / "eval.json", payload)
    for name, score in scores.items():
        logging.info("Evaluated %s of %s on %s: test accuracy %.4f, loss %s (%d examples)",
                     name, run_dir, dataset, score["accuracy"],
                     "-" if score["loss"] is None or math.isnan(score["loss"])
                     else f"{score['loss']:.4f}", score["examples"])
    return payload
