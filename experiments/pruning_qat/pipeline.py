"""The compression pipeline, on the project's runner (data, strategy, fit).

Each finished stage leaves its model in stages/, so a run interrupted in
stage k resumes in stage k (and inside it, from its BackupAndRestore backup)
instead of starting over.
"""

import dataclasses
import pathlib
import shutil

from absl import logging
import numpy as np
import tensorflow as tf
import tensorflow_model_optimization as tfmot
import tf_keras

from common import export, results, strategy as strategy_lib
from common.errors import UserError
from common.training import Run, compile_model
from experiments.pruning_qat import model as compression

STAGES = ("baseline", "pruned", "pqat", "float_tflite", "int8_tflite")


def _init_model_path(init_from: str) -> pathlib.Path:
    run_dir = pathlib.Path(init_from).expanduser()
    model_path = run_dir / "model" / "model.keras"
    if not (run_dir / results.METRICS_FILE).exists() or not model_path.exists():
        raise UserError(f"--init_from={init_from} is not a finished run folder "
                        "(it needs metrics.json and model/model.keras)")
    return model_path


def _check_init_from(config: dict) -> None:
    model_path = _init_model_path(config["init_from"])
    trained_on = results.read_json(model_path.parent.parent / results.CONFIG_FILE)
    dataset = trained_on.get("hparams", {}).get("dataset")
    if dataset and dataset != config["dataset"]:
        raise UserError(f"--init_from={config['init_from']} was trained on {dataset!r} "
                        f"but this run uses {config['dataset']!r}; pass --dataset={dataset}")


def _evaluate(model: tf_keras.Model, run: Run) -> dict[str, float]:
    if not model._is_compiled:  # pylint: disable=protected-access
        model.compile(loss=tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      metrics=["accuracy"])
    loss, accuracy = model.evaluate(run.test_ds, verbose=0)
    return {"loss": float(loss), "accuracy": float(accuracy)}


class _Stages:
    """Finished stages on disk: stages/<name>.keras for the plain models; the
    PQAT model as a weights checkpoint (tf_keras cannot reload a QAT model
    from a .keras file: its QuantizeLayer variables are saved twice over),
    rebuilt from the pruned model when a run resumes."""

    def __init__(self, run: Run):
        self.run = run
        self.folder = run.write_dir / "stages"
        self.folder.mkdir(exist_ok=True)

    def path(self, name: str) -> pathlib.Path:
        return self.folder / f"{name}.keras"

    def done(self, name: str) -> bool:
        return (self.folder / f"{name}.done").exists()

    def load(self, name: str, strategy: tf.distribute.Strategy) -> tf_keras.Model:
        with strategy.scope():
            return tf_keras.models.load_model(self.path(name))

    def load_pqat(self, strategy: tf.distribute.Strategy) -> tf_keras.Model:
        stripped = self.load("pruned", strategy)
        with strategy.scope():
            model = compression.quantize_preserving_sparsity(stripped)
            model.load_weights(str(self.folder / "pqat_weights")).expect_partial()
        return model

    def save(self, name: str, model: tf_keras.Model) -> None:
        if name == "pqat":
            model.save_weights(str(self.folder / "pqat_weights"))
        else:
            model.save(self.path(name))
        # The marker comes last: a stage is done only once its model is whole.
        results.write_json_atomic(self.folder / f"{name}.done", {"stage": name})
        self.run.drop_backup(name)


def _baseline(run: Run, stages: _Stages, epochs: int) -> tf_keras.Model:
    config, strategy = run.config, run.strategy
    if stages.done("baseline"):
        return stages.load("baseline", strategy)
    if config["init_from"]:
        with strategy.scope():
            model = tf_keras.models.load_model(_init_model_path(config["init_from"]))
        logging.info("Baseline: the model of %s (no training)", config["init_from"])
    else:
        with strategy.scope():
            model = compression.build_model(config, run.splits.image_shape,
                                            run.splits.num_classes)
            compile_model(model, config, config["baseline_learning_rate"],
                          run.steps_per_epoch * epochs)
        run.fit(model, 0, epochs, backup_name="baseline")
    stages.save("baseline", model)
    return model


def _prune(run: Run, stages: _Stages, first: int, end: int) -> tf_keras.Model:
    if stages.done("pruned"):
        return stages.load("pruned", run.strategy)
    config = run.config
    steps = run.steps_per_epoch * (end - first)
    # Pruning wraps the very layers it is given (the TFMOT route), so it works
    # on a copy from disk: the baseline in memory stays unpruned.
    source = stages.load("baseline", run.strategy)
    with run.strategy.scope():
        pruned = compression.prune(source, compression.pruning_schedule(config, steps))
        # No levers here: UpdatePruningStep advances the schedule once per
        # call into the graph, and TFMOT's wrappers are not XLA-tested.
        compile_model(pruned, config, config["pruning_learning_rate"], steps, levers=False)
    run.fit(pruned, first, end, backup_name="pruned", extra_callbacks=[
        tfmot.sparsity.keras.UpdatePruningStep(),
        tfmot.sparsity.keras.PruningSummaries(log_dir=str(run.write_dir / "logs" / "pruning")),
    ])
    stripped = tfmot.sparsity.keras.strip_pruning(pruned)
    stages.save("pruned", stripped)
    return stages.load("pruned", run.strategy)


def _pqat_under(strategy, run: Run, stages: _Stages, first: int, end: int):
    config = run.config
    steps = run.steps_per_epoch * (end - first)
    stripped = stages.load("pruned", strategy)
    with strategy.scope():
        model = compression.quantize_preserving_sparsity(stripped)
        compile_model(model, config, config["qat_learning_rate"], steps, levers=False)
    # The same run, trained under `strategy` (the default one when falling back).
    dataclasses.replace(run, strategy=strategy).fit(model, first, end, backup_name="pqat")
    return model


def _pqat(run: Run, stages: _Stages, first: int, end: int) -> tuple[tf_keras.Model, str]:
    """PQAT under the run's strategy; TFMOT does not list QAT under
    tf.distribute as supported, so where it fails there, it runs under the
    default strategy, with one line saying so."""
    default = tf.distribute.get_strategy()
    if stages.done("pqat"):
        label = results.read_json(stages.folder / "pqat_strategy.json")["strategy"]
        return stages.load_pqat(default), label
    try:
        model = _pqat_under(run.strategy, run, stages, first, end)
        label = strategy_lib.strategy_name(run.strategy)
    except (ValueError, TypeError, NotImplementedError, RuntimeError,
            tf.errors.OpError) as e:
        if run.strategy is default:
            raise
        logging.warning("PQAT cannot run under %s (%s: %s); running it under the "
                        "default strategy", strategy_lib.strategy_name(run.strategy),
                        type(e).__name__, str(e).splitlines()[0] if str(e) else "")
        run.drop_backup("pqat")
        model = _pqat_under(default, run, stages, first, end)
        label = strategy_lib.strategy_name(default)
    results.write_json_atomic(stages.folder / "pqat_strategy.json", {"strategy": label})
    stages.save("pqat", model)
    return model, label


def train(run: Run) -> dict:
    config = run.config
    if config["init_from"]:
        _check_init_from(config)  # fail before a run folder exists
    compression.base_experiment(config)
    run.start()
    stages = _Stages(run)
    baseline_epochs = 0 if config["init_from"] else config["baseline_epochs"]
    pruning_end = baseline_epochs + config["pruning_epochs"]
    qat_end = pruning_end + config["qat_epochs"]
    if config["pruning_epochs"] <= 0:
        raise UserError("pruning_epochs must be at least 1")

    baseline = _baseline(run, stages, baseline_epochs)
    pruned = _prune(run, stages, baseline_epochs, pruning_end)
    pqat, pqat_strategy = _pqat(run, stages, pruning_end, qat_end)

    model_dir = run.write_dir / "model"
    model_dir.mkdir(exist_ok=True)
    tflite = {"float_tflite": model_dir / "baseline_float.tflite",
              "int8_tflite": model_dir / "pqat_int8.tflite"}
    tflite["float_tflite"].write_bytes(export.to_tflite(baseline))
    tflite["int8_tflite"].write_bytes(export.to_tflite(pqat, quantize=True))
    integer_io = model_dir / "pqat_int8_integer_io.tflite"
    integer_io.write_bytes(export.to_tflite(pqat, quantize=True, integer_io=True))

    rows = _measure(run, {"baseline": baseline, "pruned": pruned, "pqat": pqat},
                    tflite, integer_io, model_dir)
    rows[2]["strategy"] = pqat_strategy
    print(format_table(rows))
    for name in ("baseline", "pruned"):
        shutil.copy(stages.path(name), model_dir / f"{name}.keras")
    final = next(r for r in rows if r["stage"] == "int8_tflite")
    pqat_row = next(r for r in rows if r["stage"] == "pqat")
    return run.finish({"accuracy": final["test_accuracy"], "loss": pqat_row["test_loss"]}, {
        "stages": rows,
        "test_accuracy_is": "int8 TFLite model, through the interpreter",
        "interpreter": export.INTERPRETER,
        "epochs_by_stage": {"baseline": [0, baseline_epochs],
                            "pruned": [baseline_epochs, pruning_end],
                            "pqat": [pruning_end, qat_end]},
        "model_path": "model/pqat_int8.tflite",
    })


def _measure(run: Run, keras_models: dict, tflite: dict, integer_io: pathlib.Path,
             model_dir: pathlib.Path) -> list[dict]:
    config = run.config
    rows = []
    for name, model in keras_models.items():
        test = _evaluate(model, run)
        sizes = export.weights_sizes(model)
        rows.append({"stage": name, "format": "keras", "test_accuracy": test["accuracy"],
                     "test_loss": test["loss"],
                     "sparsity": compression.kernel_sparsity(model),
                     "bytes": sizes["bytes"], "gzip_bytes": sizes["gzip_bytes"],
                     "latency_us": None})
    examples = [(image.numpy().astype(np.float32), label.numpy())
                for image, label in run.splits.test]
    example = examples[0][0]
    latency = export.latency_us(
        {**tflite, "int8_integer_io": integer_io}, example,
        invocations=config["latency_invocations"], rounds=config["latency_rounds"])
    without_xnnpack = export.latency_us(
        {**tflite, "int8_integer_io": integer_io}, example, xnnpack=False,
        invocations=config["latency_invocations"], rounds=config["latency_rounds"])
    for name, path in tflite.items():
        accuracy, count = export.tflite_accuracy(path, examples)
        sizes = export.file_sizes(path)
        rows.append({"stage": name, "format": "tflite", "test_accuracy": accuracy,
                     "test_loss": None, "num_test_examples": count,
                     "sparsity": export.tflite_weight_sparsity(path),
                     "bytes": sizes["bytes"], "gzip_bytes": sizes["gzip_bytes"],
                     "latency_us": latency[name],
                     "latency_us_without_xnnpack": without_xnnpack[name]})
    int8_row = rows[-1]
    int8_row["latency_us_integer_io"] = latency["int8_integer_io"]
    int8_row["latency_us_integer_io_without_xnnpack"] = without_xnnpack["int8_integer_io"]
    float_row = rows[-2]
    int8_row["size_ratio_vs_float"] = float_row["bytes"] / int8_row["bytes"]
    int8_row["gzip_ratio_vs_float_file"] = float_row["bytes"] / int8_row["gzip_bytes"]
    int8_row["latency_ratio_vs_float"] = int8_row["latency_us"] / float_row["latency_us"]
    return rows


def format_table(rows: list[dict]) -> str:
    header = f"{'stage':<13} {'accuracy':>8} {'sparsity':>8} {'bytes':>9} {'gzip':>9} {'us/example':>10}"
    lines = [header, "-" * len(header)]
    for row in rows:
        latency = f"{row['latency_us']:.1f}" if row.get("latency_us") else "-"
        sparsity = f"{row['sparsity']:.3f}" if row.get("sparsity") is not None else "-"
        lines.append(f"{row['stage']:<13} {row['test_accuracy']:>8.4f} {sparsity:>8} "
                     f"{row['bytes']:>9} {row['gzip_bytes']:>9} {latency:>10}")
    return "\n".join(lines)
