"""--mode=export: a finished run's serving files (export/), written again."""

import pathlib
from typing import Any

import tensorflow as tf

import experiments
from common.config.options import RunOptions
from common.deploy import serving
from common.errors import UserError
from common.runs import files, saved
from common.runs.lock import Lock


def _is_exported(entry: dict) -> bool:
    return pathlib.PurePath(entry.get("path", "")).parts[:1] == (serving.EXPORT_DIR,)


def run(experiment, options: RunOptions, config: dict,
        strategy: tf.distribute.Strategy) -> dict[str, Any]:
    """Writes export/ for the finished run --run_name (again, if it has
    one) and rewrites its metrics.json with the exported models.

    The model exported is the run's Keras model named "model", else the
    first keras/h5 model it declares; the run's lock is held meanwhile.
    metrics.json's previous export/ entries are replaced and its
    "export_error" dropped. Prints each exported file with its size.

    Args:
        experiment: the experiment's module (unused).
        options: the command's flags (results_dir, run_name).
        config: unused: the run's own config.json says what it was
            trained on.
        strategy: unused (export runs on the default strategy).

    Returns:
        The run's new metrics.json.

    Raises:
        UserError: a missing or unfinished run, a run another process
            holds (its lock), no Keras model, a model that cannot be loaded,
            class names that do not match it.
    """
    del config, strategy
    run_dir = saved.find_finished(options.results_dir, options.experiment, options.run_name)
    lock = Lock(run_dir, "run").acquire()
    try:
        run_config = saved.read_config(run_dir)
        metrics = saved.read_metrics(run_dir)
        entries = [e for e in saved.declared_models(run_dir)
                   if e["format"] in ("keras", "h5")]
        if not entries:
            raise UserError(f"run {run_dir} declares no Keras model to export")
        entry = next((e for e in entries if e.get("name") == "model"), entries[0])
        model = saved.load_entry(run_dir, entry, compile=False,
                                 scope=experiments.hook(experiment, "load_scope"))
        image_shape = run_config.get("image_shape") or list(model.input_shape[1:])
        names = serving.class_names_of(run_config, int(model.output_shape[-1]))
        outcome = serving.export_model(run_dir, model, names, image_shape)
        metrics["models"] = ([e for e in metrics.get("models") or [entry]
                              if not _is_exported(e)] + outcome["models"])
        metrics["exported"] = outcome["exported"]
        metrics.pop("export_error", None)
        files.write_json_atomic(run_dir / files.METRICS_FILE, metrics)
    finally:
        lock.release()
    for item in outcome["exported"]:
        print(f"exported {run_dir / item['path']} ({item['format']}, {item['bytes']:,} bytes)")
    return metrics
