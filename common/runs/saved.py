"""Finished runs as readers see them: found safely, and their models saved,
declared and loaded the way their metrics.json says.

A run declares its models in metrics.json:

    "models": [{"name": "model", "format": "keras", "path": "model/model.keras",
                "bytes": 250120},
               {"name": "int8_tflite", "format": "tflite", "path": "...", ...}]

Formats: keras (.keras), h5 (whole model in HDF5, for models .keras cannot
reload), tflite, saved_model (TensorFlow Serving's layout). A keras or h5
model may name a `load_scope` ("module:function", a context manager with
the custom objects loading needs). common/ never asks which experiment
made a run: it follows these declarations.
"""

import contextlib
import importlib
import pathlib
from typing import Any, Optional

import tf_keras

from common.errors import UserError
from common.runs import files

FORMATS = ("keras", "h5", "tflite", "saved_model")
FINISHED = ("completed", "stopped_early")


def save_final_model(model: tf_keras.Model, write_dir: pathlib.Path, keep: str) -> pathlib.Path:
    """Saves the run's final model in model/: model.h5 where its last stage
    keeps whole models as HDF5, else model.keras.

    Args:
        model: the trained model.
        write_dir: where this process writes (its model/ folder is created
            if missing; `write_dir` itself must exist).
        keep: the last stage's keep form ("weights", "model" or "h5"); only
            "h5" selects HDF5.

    Returns:
        The saved file: <write_dir>/model/model.h5 or model/model.keras.
    """
    folder = pathlib.Path(write_dir) / "model"
    folder.mkdir(exist_ok=True)
    path = folder / ("model.h5" if keep == "h5" else "model.keras")
    model.save(path)
    return path


def declare(write_dir: pathlib.Path, name: str, path: pathlib.Path,
            load_scope=None) -> dict[str, Any]:
    """A metrics.json "models" entry for the file or folder at `path`.

    The format follows from `path`: a folder is a saved_model (its size is
    the sum of its files' sizes); a file is keras, h5 or tflite by its
    suffix (.keras, .h5, .tflite).

    Args:
        write_dir: the folder the entry's path is relative to (the run
            folder); `path` must be inside it.
        name: the model's name in the run ("model", "int8_tflite", ...).
        path: the model's file or folder.
        load_scope: a module-level function returning the context manager
            loading needs (custom objects), or None; it is recorded as
            "module:qualified name".

    Returns:
        {"name": str, "format": str, "path": str (relative to
        `write_dir`), "bytes": int}, with "load_scope": str when given.

    Raises:
        KeyError: a file whose suffix is none of .keras, .h5 and .tflite.
        ValueError: `path` is not inside `write_dir`.
        OSError: `path` does not exist.
    """
    path = pathlib.Path(path)
    if path.is_dir():
        size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
        fmt = "saved_model"
    else:
        size = path.stat().st_size
        fmt = {".keras": "keras", ".h5": "h5", ".tflite": "tflite"}[path.suffix]
    entry = {"name": name, "format": fmt, "path": str(path.relative_to(write_dir)),
             "bytes": size}
    if load_scope is not None:
        entry["load_scope"] = f"{load_scope.__module__}:{load_scope.__qualname__}"
    return entry


def _scope(entry: dict):
    spec = entry.get("load_scope")
    if not spec:
        return contextlib.nullcontext()
    module, _, function = spec.partition(":")
    return getattr(importlib.import_module(module), function)()


def find_finished(results_dir: str, experiment: str, run_name: str) -> pathlib.Path:
    """results_dir/experiment/run_name, which must be a finished run:
    metrics.json readable, with a finished status.

    Args:
        results_dir: the results folder (--results_dir).
        experiment: the experiment's name (its folder under `results_dir`).
        run_name: the run folder's name (--run_name); it must be a plain
            folder name (files.check_name).

    Returns:
        The run folder, a pathlib.Path.

    Raises:
        UserError: `run_name` is not a plain folder name, there is no such
            folder, or the run is not finished (see finished()).
    """
    files.check_name("run_name", run_name)
    path = pathlib.Path(results_dir) / experiment / run_name
    if not path.is_dir():
        raise UserError(f"no run {path} (expected a folder made by launch.py "
                        f"--experiment={experiment})")
    return finished(path)


def finished(path: pathlib.Path) -> pathlib.Path:
    """`path` if it holds a finished run, else UserError saying why not.

    A finished run has a readable metrics.json whose status is one of
    FINISHED ("completed", "stopped_early").

    Args:
        path: the run folder, a pathlib.Path.

    Returns:
        `path`.

    Raises:
        UserError: there is no metrics.json, it is damaged, or its status is
            not a finished one (a failed run's failure is named).
    """
    metrics_path = path / files.METRICS_FILE
    if not metrics_path.exists():
        raise UserError(f"run {path} is not finished (no metrics.json); resume it "
                        "first, or choose a finished run")
    metrics = read_metrics(path)
    if metrics.get("status") not in FINISHED:
        raise UserError(f"run {path} has status {metrics.get('status')!r}"
                        + (f" ({metrics['failure']})" if metrics.get("failure") else "")
                        + "; only a completed run can be used")
    return path


def read_metrics(path: pathlib.Path) -> dict:
    """A run's metrics.json; UserError if it is damaged.

    Args:
        path: the run folder.

    Returns:
        The metrics.json object, a dict.

    Raises:
        UserError: metrics.json cannot be read, is not valid JSON or is not
            a JSON object.
    """
    try:
        metrics = files.read_json(pathlib.Path(path) / files.METRICS_FILE)
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read {pathlib.Path(path) / files.METRICS_FILE}: "
                        f"{e}") from None
    if not isinstance(metrics, dict):
        raise UserError(f"{pathlib.Path(path) / files.METRICS_FILE} is damaged "
                        "(not a JSON object)")
    return metrics


def read_config(path: pathlib.Path) -> dict:
    """A run's config.json; UserError if it is missing or damaged.

    Args:
        path: the run folder.

    Returns:
        The config.json object, a dict whose "hparams" is a dict.

    Raises:
        UserError: config.json cannot be read, is not valid JSON, is not a
            JSON object or has no "hparams" object.
    """
    config_path = pathlib.Path(path) / files.CONFIG_FILE
    try:
        config = files.read_json(config_path)
        if not isinstance(config, dict) or not isinstance(config.get("hparams"), dict):
            raise ValueError("no hparams object")
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read {config_path}: {e}") from None
    return config


def declared_models(path: pathlib.Path) -> list[dict]:
    """The models a finished run declares (older runs: model/model.keras).

    A run whose metrics.json has no (or an empty) "models" list declares one
    keras model, "model", at metrics.json's "model_path" or else
    model/model.keras. Whether the run is finished is not checked here.

    Args:
        path: the run folder, a pathlib.Path.

    Returns:
        The "models" entries, as the module docstring describes them.

    Raises:
        UserError: metrics.json is damaged (see read_metrics()), or an
            entry's format is not one of FORMATS or its path does not exist
            in the run folder.
    """
    metrics = read_metrics(path)
    entries = metrics.get("models")
    if not entries:
        entries = [{"name": "model", "format": "keras",
                    "path": metrics.get("model_path", "model/model.keras")}]
    for entry in entries:
        if entry.get("format") not in FORMATS or not (path / entry.get("path", "")).exists():
            raise UserError(f"run {path} declares model {entry.get('name')!r} at "
                            f"{entry.get('path')!r} ({entry.get('format')}), which is missing")
    return entries


def load_keras_model(path: pathlib.Path, name: Optional[str] = None,
                     compile: bool = True) -> tf_keras.Model:
    """The run's Keras model called `name` (default: its first keras/h5
    model); UserError if it cannot be loaded. compile=False: for inference
    (no optimizer; predict_on_batch works whatever steps_per_execution).

    Args:
        path: the run folder, a pathlib.Path.
        name: the declared model's name, or None for the first model of
            format keras or h5.
        compile: whether to restore the model's compiled state (optimizer,
            loss, metrics).

    Returns:
        The loaded tf_keras.Model.

    Raises:
        UserError: the run declares no such Keras model, its declarations
            are damaged (see declared_models()), or the file cannot be
            loaded (see load_entry()).
    """
    entries = [e for e in declared_models(path) if e["format"] in ("keras", "h5")
               and (name is None or e["name"] == name)]
    if not entries:
        raise UserError(f"run {path} has no Keras model" + (f" {name!r}" if name else ""))
    return load_entry(path, entries[0], compile)


def load_entry(path: pathlib.Path, entry: dict, compile: bool = True) -> tf_keras.Model:
    """Loads the Keras model of one declared entry, within its load_scope.

    Args:
        path: the run folder.
        entry: a "models" entry of format keras or h5 (declared_models()):
            its "path" is relative to `path`; its "load_scope", if any, is
            imported and entered around loading.
        compile: whether to restore the model's compiled state; False for
            inference.

    Returns:
        The loaded tf_keras.Model.

    Raises:
        UserError: loading failed in any way (a damaged file, or a
            load_scope that cannot be imported or entered); the message
            names the file and the error's first line.
    """
    model_path = pathlib.Path(path) / entry["path"]
    try:
        with _scope(entry):
            return tf_keras.models.load_model(model_path, compile=compile)
    except Exception as e:  # a damaged file fails in many ways (zip, HDF5, Keras)
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise UserError(f"cannot load the model {model_path} ({type(e).__name__}: "
                        f"{first}); is the file damaged?") from None
