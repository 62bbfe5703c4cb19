"""--mode=eval: every model a finished run declares, scored again on the test split."""

import hashlib
import json
import math
import os
import pathlib
from typing import Any, Optional, Sequence

from absl import logging
import tensorflow as tf

import experiments
from common.config.options import RunOptions
from common.data import image_folder, pipeline
from common.deploy import serving, tflite
from common.errors import UserError
from common.runs import files, saved
from common.training import evaluation
from common.training.run import load_data


def run(experiment, options: RunOptions, config: dict,
        strategy: tf.distribute.Strategy) -> dict[str, Any]:
    """Scores every model the run --run_name declares (Keras models under
    `strategy`, TFLite files through the interpreter, SavedModels through
    their signature) on the test split of the run's data, unless
    --dataset / --data_dir name other data; writes eval.json (the run's
    own data, unchanged) or eval-<dataset>-<key>.json (other data, or the
    run's image folder since changed: eval_file_name()).

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
        "recorded_test_accuracy", "data" (data_of())}.

    Raises:
        UserError: a missing or unfinished run, a damaged file, a model
            that cannot be loaded, data that cannot be loaded, data whose
            classes are not the run's (check_classes()).
    """
    run_dir = saved.find_finished(options.results_dir, options.experiment, options.run_name)
    trained = saved.read_config(run_dir)
    recorded = saved.read_metrics(run_dir)
    dataset = options.dataset or trained["hparams"].get("dataset", config["dataset"])
    data_dir = options.data_dir or (trained.get("data") or {}).get("data_dir")
    splits = load_data({**config, **trained["hparams"], "dataset": dataset}, data_dir)
    names = serving.class_names_of(trained)
    check_classes(names, splits.class_names, run_dir, dataset)
    recorded_data = trained.get("data") if isinstance(trained.get("data"), dict) else {}
    if not any(k in recorded_data for k in ("dataset", "source", "data_dir")):
        # A run from before config.json said where its data came from: its
        # dataset from the hyperparameters, and other data wherever the
        # command names some.
        recorded_data = {"dataset": trained["hparams"].get("dataset")}
        if options.data_dir:
            recorded_data["data_dir"] = "(not recorded)"
    data = data_of(recorded_data, dataset, data_dir, splits.source, splits.file_set)
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
               "recorded_test_accuracy": recorded.get("test_accuracy"), "data": data}
    name = eval_file_name(data)
    files.write_json_atomic(run_dir / name, payload)
    for model, score in scores.items():
        logging.info("Evaluated %s of %s on %s: test accuracy %.4f, loss %s (%d examples)",
                     model, run_dir, dataset, score["accuracy"],
                     "-" if score["loss"] is None or math.isnan(score["loss"])
                     else f"{score['loss']:.4f}", score["examples"])
    if not data["same_as_run"]:
        logging.warning("Scored on other data than the run's test split (%s): written to %s, "
                        "not eval.json, which is for the run's own; these figures are not comparable "
                        "with its recorded test accuracy", data["differs"], run_dir / name)
    return payload


def _normalized(name: str) -> str:
    """A class name compared loosely: case, spaces and punctuation ignored
    ("T-shirt/top" and the folder name "T-shirt_top" are one class).

    Args:
        name: a class name.

    Returns:
        Its letters and digits, case-folded.
    """
    return "".join(c for c in name.casefold() if c.isalnum())


def check_classes(trained: Sequence[str], found: Sequence[str], run_dir, dataset: str) -> None:
    """Refuses to score a run on data whose classes are not the run's: its
    labels would index other classes (or none: a label past the model's
    outputs fails inside TensorFlow).

    Args:
        trained: the run's class names in class-index order (empty where the
            run records none).
        found: the data's class names in class-index order (empty where the
            source has none).
        run_dir: the run's folder, for the message.
        dataset: the data's --dataset, for the message.

    Raises:
        UserError: the run's names are not strings (a damaged config.json);
            the counts differ, or a name differs beyond case, spaces and
            punctuation; the message names the first difference.
    """
    if not trained or not found:
        return
    if not all(isinstance(n, str) for n in trained):
        raise UserError(f"{run_dir}/config.json is damaged: its class_names are not a list of "
                        "names")
    if len(trained) != len(found):
        raise UserError(f"run {run_dir} was trained on {len(trained)} classes and "
                        f"--dataset={dataset} has {len(found)}: evaluate it on data with the "
                        f"run's classes ({', '.join(map(repr, trained[:12]))}"
                        f"{', ...' if len(trained) > 12 else ''})")
    for index, (was, now) in enumerate(zip(trained, found)):
        if _normalized(was) != _normalized(now):
            raise UserError(f"run {run_dir} was trained on other classes than "
                            f"--dataset={dataset} has: class {index} is {was!r} in the run, "
                            f"{now!r} in the data; evaluate it on data with the run's classes "
                            "in the same order")


def data_of(trained: dict, dataset: str, data_dir: Optional[str], source: str,
            file_set: Optional[dict]) -> dict[str, Any]:
    """What eval.json says of the data it scored, against the run's own.

    Args:
        trained: config.json's "data" (training.run.data_identity()); input.
        dataset: the data's --dataset.
        data_dir: its --data_dir, or None.
        source: where it was read from (Splits.source: a folder, or "tfds").
        file_set: an image folder's fingerprint (image_folder.file_set()), or
            None.

    Returns:
        {"dataset", "data_dir" (absolute or None), "source", "same_as_run": bool,
        "differs": "" or what differs in words, "key": 8 hex digits naming
        the data (its dataset, folder and, for image folders, files)}.
    """
    where = str(pathlib.Path(data_dir).expanduser().resolve()) if data_dir else None
    differs = []
    if trained.get("dataset") not in (None, dataset):
        differs.append(f"dataset {dataset!r}, the run's {trained.get('dataset')!r}")
    if "source" in trained:  # the folder found, given or not by --data_dir
        if _real(trained["source"]) != _real(source):
            differs.append(f"read from {source!r}, the run from {trained['source']!r}")
    elif "data_dir" in trained and trained["data_dir"] != where:
        differs.append(f"data_dir {where!r}, the run's {trained['data_dir']!r}")
    if not differs and ("file_set" in trained or file_set):
        change = image_folder.describe_change(trained.get("file_set"), file_set)
        if change:
            differs.append(f"the image folder changed since the run: {change}")
    key = hashlib.sha256(json.dumps([dataset, _real(source), where, file_set], sort_keys=True)
                         .encode()).hexdigest()[:8]
    return {"dataset": dataset, "data_dir": where, "source": source, "same_as_run": not differs,
            "differs": "; ".join(differs), "key": key}


def _real(source: Any) -> Any:
    """A source folder with links and relative parts resolved ("tfds" as is):
    a run given --data_dir=./data and an eval from elsewhere read one folder."""
    if not isinstance(source, str) or source == "tfds":
        return source
    return os.path.realpath(os.path.expanduser(source))


def eval_file_name(data: dict) -> str:
    """eval.json for the run's own data; eval-<dataset>-<key>.json for other
    data (or the run's image folder since changed), so that no evaluation
    replaces another's.

    Args:
        data: data_of()'s answer.

    Returns:
        A file name inside the run folder.
    """
    if data["same_as_run"]:
        return "eval.json"
    dataset = "".join(c if c.isalnum() or c in "_-" else "_" for c in data["dataset"])[:40]
    return f"eval-{dataset}-{data['key']}.json"
