"""Finished runs as readers see them: found safely, and their models saved,
declared and loaded the way their metrics.json says.

A run declares its models in metrics.json:

    "models": [{"name": "model", "format": "keras", "path": "model/model.keras",
                "bytes": 250120},
               {"name": "int8_tflite", "format": "tflite", "path": "...", ...}]

Formats: keras (.keras), h5 (whole model in HDF5, for models .keras cannot
reload), tflite, saved_model (TensorFlow Serving's layout). A keras or h5
model that needs custom objects to load says so with "load_scope": true; the
caller supplies the scope (the experiment's `load_scope` hook, or the
stage's), never the file. common/ never asks which experiment made a run: it
follows these declarations.

A run folder is input someone else may have made (docs/security.md): every
declared path must stay inside the run folder, models load with Keras'
safe mode whatever their container (a ".keras" that is no zip is refused,
an HDF5 or .keras model holding Lambda layers is refused unless
allow_unsafe_deserialization(True), launch.py's --unsafe_deserialization),
and metrics.json and config.json are read as bounded regular files.
"""

import contextlib
import json
import pathlib
import zipfile
from typing import Any, Callable, ContextManager, Optional

import tf_keras

from common.errors import UserError
from common.runs import files

FORMATS = ("keras", "h5", "tflite", "saved_model")
FINISHED = ("completed", "stopped_early")
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
# A model's configuration read to look for code before loading it, at most.
MAX_MODEL_CONFIG_BYTES = 64 * 2**20
# Layer classes whose configuration carries Python code (marshalled bytecode).
CODE_LAYERS = ("Lambda",)
# The packages a model configuration may name as modules: Keras, TensorFlow,
# TFMOT and the project's own experiments (code on this machine, not in the
# run folder).
CODE_MODULES = ("keras", "tf_keras", "tensorflow", "tensorflow_model_optimization",
                "experiments", "builtins")

Scope = Optional[Callable[[], ContextManager]]
_unsafe = False


def allow_unsafe_deserialization(allowed: bool) -> None:
    """Whether models holding Python code (Lambda layers) may load in this
    process: False by default; launch.py's --unsafe_deserialization sets it,
    for runs the user trusts.

    Args:
        allowed: True to load such models, running their code.
    """
    global _unsafe
    _unsafe = bool(allowed)


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
        entry["load_scope"] = True  # the reader supplies it; a file never names code
    return entry


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
    if path.is_symlink():
        raise UserError(f"run {path} is a symbolic link; a run folder must be a folder of its "
                        "own (copy the run instead of linking it)")
    if not path.is_dir():
        raise UserError(f"no run {path}; {_runs_there(path.parent, experiment)}")
    return finished(path)


def _runs_there(folder: pathlib.Path, experiment: str, shown: int = 5) -> str:
    """The finished runs of `folder`, newest first, for a message."""
    try:
        runs = [p for p in folder.iterdir() if p.is_dir() and not p.is_symlink()
                and (p / files.METRICS_FILE).is_file()]
    except OSError:
        runs = []
    if not runs:
        return (f"{folder} holds no finished run (runs are made by launch.py "
                f"--experiment={experiment})")
    runs.sort(key=lambda p: p.stat().st_mtime, reverse=True)
    names = ", ".join(p.name for p in runs[:shown])
    more = f", ... ({len(runs) - shown} more)" if len(runs) > shown else ""
    return f"finished runs there, newest first: {names}{more}"


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
    """The models a finished run declares (older runs: model/model.keras),
    each checked: a known format, a path inside the run folder that exists.

    A run whose metrics.json has no (or an empty) "models" list declares one
    keras model, "model", at metrics.json's "model_path" or else
    model/model.keras. Whether the run is finished is not checked here.

    Args:
        path: the run folder, a pathlib.Path.

    Returns:
        The "models" entries, as the module docstring describes them.

    Raises:
        UserError: metrics.json is damaged (see read_metrics()), "models" is
            not a list of objects, or an entry has no name, an unknown
            format, a path that leaves the run folder (absolute, "..", a
            symbolic link out of it), or a path that does not exist or is
            not a file (a folder for saved_model).
    """
    path = pathlib.Path(path)
    metrics = read_metrics(path)
    entries = metrics.get("models")
    where = path / files.METRICS_FILE
    if not entries:
        model_path = metrics.get("model_path", "model/model.keras")
        entries = [{"name": "model", "format": "keras", "path": model_path}]
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise UserError(f"{where} is damaged: \"models\" is not a list of objects")
    for entry in entries:
        name, fmt = entry.get("name"), entry.get("format")
        if not isinstance(name, str) or not name:
            raise UserError(f"{where} is damaged: a model entry has no name")
        if fmt not in FORMATS:
            raise UserError(f"{where} declares model {name!r} in format {fmt!r}; "
                            f"known formats: {', '.join(FORMATS)}")
        file = files.inside(path, entry.get("path"), f"model {name!r} of {where}")
        if not (file.is_dir() if fmt == "saved_model" else file.is_file()):
            raise UserError(f"run {path} declares model {name!r} at {entry.get('path')!r} "
                            f"({fmt}), which is missing")
    return entries


def load_keras_model(path: pathlib.Path, name: Optional[str] = None,
                     compile: bool = True, scope: Scope = None) -> tf_keras.Model:
    """The run's Keras model called `name` (default: its first keras/h5
    model). compile=False: for inference (no optimizer; predict_on_batch
    works whatever steps_per_execution).

    Args:
        path: the run folder, a pathlib.Path.
        name: the declared model's name, or None for the first model of
            format keras or h5.
        compile: whether to restore the model's compiled state (optimizer,
            loss, metrics).
        scope: what loading a model declared with "load_scope" is entered
            in: the experiment's load_scope hook (custom objects); None if
            the caller has none.

    Returns:
        The loaded tf_keras.Model.

    Raises:
        UserError: the run declares no such Keras model, its declarations
            are damaged (see declared_models()), or the file cannot be
            loaded safely (see load_model_file()).
    """
    entries = [e for e in declared_models(path) if e["format"] in ("keras", "h5")
               and (name is None or e["name"] == name)]
    if not entries:
        raise UserError(f"run {path} has no Keras model" + (f" {name!r}" if name else ""))
    return load_entry(path, entries[0], compile, scope)


def load_entry(path: pathlib.Path, entry: dict, compile: bool = True,
               scope: Scope = None) -> tf_keras.Model:
    """Loads the Keras model of one declared entry.

    Args:
        path: the run folder.
        entry: a "models" entry of format keras or h5 (declared_models()):
            its "path" is inside `path`; with "load_scope", the model needs
            custom objects that `scope` must supply.
        compile: whether to restore the model's compiled state; False for
            inference.
        scope: the context manager factory for a "load_scope" entry (the
            experiment's load_scope hook); ignored for others.

    Returns:
        The loaded tf_keras.Model.

    Raises:
        UserError: the entry needs a scope and none was given, or the file
            cannot be loaded safely (see load_model_file()).
    """
    where = pathlib.Path(path) / files.METRICS_FILE
    model_path = files.inside(path, entry.get("path"), f"model {entry.get('name')!r} of {where}")
    if entry.get("load_scope") and scope is None:
        raise UserError(f"model {entry.get('name')!r} of run {path} needs its experiment's "
                        "custom objects to load, and this experiment declares none "
                        "(a load_scope hook)")
    return load_model_file(model_path, entry["format"], compile,
                           scope if entry.get("load_scope") else None)


def load_model_file(model_path: pathlib.Path, fmt: str, compile: bool = True,
                    scope: Scope = None) -> tf_keras.Model:
    """Loads a whole Keras model from a file that may come from someone
    else, with Keras' safe mode in force whatever its container.

    A "keras" file must be a zip named .keras (tf_keras would load anything
    else as a legacy file, outside safe mode); an "h5" file must be HDF5;
    a file that is both is refused. The model's configuration is read
    first, and a model that holds or names code (a Lambda layer, a function
    serialised as bytecode, a module outside CODE_MODULES) is refused unless
    allow_unsafe_deserialization(True).

    Args:
        model_path: the model file.
        fmt: "keras" or "h5", as declared.
        compile: whether to restore the model's compiled state.
        scope: a context manager factory entered around loading (custom
            objects), or None.

    Returns:
        The loaded tf_keras.Model.

    Raises:
        UserError: the file is not what `fmt` says, holds or names code (the
            message names it and --unsafe_deserialization), or loading
            fails in any other way (the message names the file and the
            error's first line).
    """
    model_path = pathlib.Path(model_path)
    config = _model_config(model_path, fmt)
    code = sorted(set(_code_layers(config)))
    if code and not _unsafe:
        raise UserError(f"the model {model_path} holds Python code ({', '.join(code[:3])}), "
                        "which runs when it loads; load it only from a run you trust, "
                        "with --unsafe_deserialization")
    try:
        with scope() if scope else contextlib.nullcontext():
            return tf_keras.models.load_model(model_path, compile=compile,
                                              safe_mode=not _unsafe)
    except Exception as e:  # a damaged file fails in many ways (zip, HDF5, Keras)
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise UserError(f"cannot load the model {model_path} ({type(e).__name__}: "
                        f"{first}); is the file damaged?") from None


def _model_config(model_path: pathlib.Path, fmt: str) -> Any:
    """The model's architecture as its file stores it (JSON), read without
    building anything; UserError for a file that is not `fmt`."""
    try:
        with open(model_path, "rb") as f:
            hdf5 = f.read(len(HDF5_SIGNATURE)) == HDF5_SIGNATURE
        is_zip = zipfile.is_zipfile(model_path)
        if hdf5 and is_zip:
            raise UserError(f"the model {model_path} is both an HDF5 file and a zip; "
                            "refusing to load it")
        if fmt == "keras":
            # tf_keras loads a file as .keras only by that suffix; anything
            # else would go to its legacy loader, outside safe mode.
            if model_path.suffix != ".keras" or not is_zip:
                raise UserError(f"the model {model_path} is declared as .keras but is not "
                                "a .keras zip file; refusing to load it")
            with zipfile.ZipFile(model_path) as archive:
                info = archive.getinfo("config.json")
                if info.file_size > MAX_MODEL_CONFIG_BYTES:
                    raise UserError(f"the model {model_path} has a config.json of "
                                    f"{info.file_size:,} bytes")
                return json.loads(archive.read(info))
        if not hdf5:
            raise UserError(f"the model {model_path} is declared as HDF5 but is not an "
                            "HDF5 file; refusing to load it")
        import h5py  # installed with TensorFlow
        with h5py.File(model_path, "r") as h5:
            raw = h5.attrs.get("model_config")
        if raw is None:
            raise UserError(f"the model {model_path} holds no model configuration "
                            "(weights only?)")
        if not isinstance(raw, (bytes, str)):
            raise ValueError("its model_config is not JSON text")
        return json.loads(raw.decode() if isinstance(raw, bytes) else raw)
    except UserError:
        raise
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, NotImplementedError,
            RecursionError, zipfile.BadZipFile) as e:
        raise UserError(f"cannot read the model {model_path} ({type(e).__name__}: "
                        f"{str(e).strip()[:200]}); is the file damaged?") from None


def _code_layers(config: Any):
    """Yields a description of each piece of code a model configuration
    holds or names, at any depth (nested models, wrappers): a layer of
    CODE_LAYERS, a function serialised as bytecode (Keras' func_dump: a
    "*_type" of "lambda", a "__lambda__" object), a module outside
    CODE_MODULES (tf_keras imports whatever module a .keras config names)."""
    stack = [config]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if node.get("class_name") in CODE_LAYERS:
                inner = node.get("config")
                name = inner.get("name", "") if isinstance(inner, dict) else ""
                yield f"{node['class_name']} layer {name!r}"
            elif node.get("class_name") == "__lambda__":
                yield "a serialised Python function"
            for key, value in node.items():
                if isinstance(key, str) and key.endswith("_type") and value == "lambda":
                    yield f"a Python function ({key})"
                if key == "module" and value is not None and (
                        not isinstance(value, str)
                        or value.split(".")[0] not in CODE_MODULES):
                    yield f"module {value!r}"
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
