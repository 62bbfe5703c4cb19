"""The compression flow as stages, and its finishing step.

baseline (trained, or the model of --init_from) -> pruned (prune_low_magnitude
on entry, strip_pruning on exit) -> pqat (quantize_apply on entry; falls back
to the default strategy where TFMOT cannot run under the run's), all run by
common/training/stage_runner.py with its resume layout. finish() exports the
float TFLite model of the baseline and the int8 one of the PQAT model and
measures every stage on the whole test split (TFLite through the
interpreter).
"""

from absl import logging
import tensorflow_model_optimization as tfmot

from common.data import pipeline
from common.deploy import tflite as tflite_lib
from common.runs import saved
from common.training import evaluation
from common.training.stages import FinishContext, Stage, StageContext
from experiments.pruning_qat import model as compression


def _describe(context: StageContext) -> str:
    return (f" ({context.epochs} epoch(s) of {context.steps_per_epoch} steps at global "
            f"batch {context.config['batch_size']})")


def _schedule(context: StageContext):
    schedule, note = compression.pruning_schedule(context.config, context.steps,
                                                  _describe(context))
    return schedule, note


def check_pruning(context: StageContext) -> None:
    _, note = _schedule(context)
    if note:
        logging.info("%s", note)


def prune(model, context: StageContext):
    return compression.prune(model, _schedule(context)[0],
                             context.config["pruning_min_weights"])


def strip(model, context: StageContext):
    return tfmot.sparsity.keras.strip_pruning(model)


def quantize(model, context: StageContext):
    return compression.quantize_preserving_sparsity(model)


class SparsitySummaries(tfmot.sparsity.keras.PruningSummaries):
    """PruningSummaries' per-layer sparsity and thresholds only (in
    logs/pruning/metrics, at every epoch's start and at the end): the epoch
    figures are the run's own TensorBoard callback's, and written twice they
    would show in the HParams dashboard as a second set of metrics."""

    def on_train_begin(self, logs=None):
        pass  # no train/ writer: TensorBoard's own hooks are skipped

    def on_epoch_begin(self, epoch, logs=None):
        super().on_epoch_begin(epoch, None)  # None: the sparsity part only

    def on_epoch_end(self, epoch, logs=None):
        pass

    def on_train_end(self, logs=None):
        self.on_epoch_begin(0)  # the sparsity the stage ends with
        self._file_writer.flush()


def pruning_callbacks(context: StageContext) -> list:
    # UpdatePruningStep advances the schedule (required); the summaries put
    # sparsity in TensorBoard.
    return [tfmot.sparsity.keras.UpdatePruningStep(),
            SparsitySummaries(log_dir=str(context.log_dir / "pruning"), write_graph=False)]


def stages(config: dict) -> list[Stage]:
    compression.base_experiment(config)
    if config["init_from"]:
        compression.init_run(config)  # fail before a run folder exists
    return [
        Stage("baseline", 0 if config["init_from"] else config["baseline_epochs"],
              config["baseline_learning_rate"], keep="model"),
        # No speed levers: UpdatePruningStep advances the schedule once per
        # call into the graph, and TFMOT's wrappers are not XLA-tested.
        # Compression runs in float32 whatever the baseline's precision.
        Stage("pruned", config["pruning_epochs"], config["pruning_learning_rate"],
              on_start=prune, on_end=strip, callbacks=pruning_callbacks,
              speed_levers=False, keep="model", float32=True, check=check_pruning),
        # .keras cannot reload a QAT model (its QuantizeLayer variables are
        # saved twice over); HDF5 can, within TFMOT's quantize scope.
        Stage("pqat", config["qat_epochs"], config["qat_learning_rate"],
              on_start=quantize, speed_levers=False, keep="h5",
              load_scope=compression.quantize_scope, fallback_to_default_strategy=True,
              float32=True),
    ]


def finish(context: FinishContext) -> dict:
    """Exports the TFLite models, measures every stage, prints the table;
    the headline test figures become the int8 TFLite model's."""
    config = context.config
    model_dir = context.write_dir / "model"
    keras_models = {name: load() for name, load in context.stage_models.items()}
    tflite = {"float_tflite": model_dir / "baseline_float.tflite",
              "int8_tflite": model_dir / "pqat_int8.tflite"}
    tflite["float_tflite"].write_bytes(tflite_lib.to_tflite(keras_models["baseline"]))
    tflite["int8_tflite"].write_bytes(tflite_lib.to_tflite(keras_models["pqat"], quantize=True))
    integer_io = model_dir / "pqat_int8_integer_io.tflite"
    integer_io.write_bytes(tflite_lib.to_tflite(keras_models["pqat"], quantize=True,
                                            integer_io=True))
    rows = []
    for name, model in keras_models.items():
        scores = evaluation.Evaluator(model, context.strategy)(context.test_dataset)
        sizes = tflite_lib.weights_sizes(model)
        rows.append({"name": name, "format": "keras", "test_accuracy": scores["accuracy"],
                     "test_loss": scores["loss"], "num_test_examples": scores["examples"],
                     "sparsity": compression.kernel_sparsity(model), **sizes,
                     "latency_us": None})
    files = {**tflite, "int8_integer_io": integer_io}
    example = pipeline.first_image(context.test_split).astype("float32")
    latency = tflite_lib.latency_us(files, example, invocations=config["latency_invocations"],
                                rounds=config["latency_rounds"])
    builtin = tflite_lib.latency_us(files, example, xnnpack=False,
                                invocations=config["latency_invocations"],
                                rounds=config["latency_rounds"])
    for name, path in tflite.items():
        scores = tflite_lib.tflite_scores(path, pipeline.batches(context.test_split))
        rows.append({"name": name, "format": "tflite", "test_accuracy": scores["accuracy"],
                     "test_loss": scores["loss"], "num_test_examples": scores["examples"],
                     "sparsity": tflite_lib.tflite_weight_sparsity(path),
                     **tflite_lib.file_sizes(path), "latency_us": latency[name],
                     "latency_us_without_xnnpack": builtin[name]})
    float_row, int8_row = rows[-2], rows[-1]
    int8_row.update({
        "latency_us_integer_io": latency["int8_integer_io"],
        "latency_us_integer_io_without_xnnpack": builtin["int8_integer_io"],
        "size_ratio_vs_float": float_row["bytes"] / int8_row["bytes"],
        "gzip_ratio_vs_float_file": float_row["bytes"] / int8_row["gzip_bytes"],
        "latency_ratio_vs_float": int8_row["latency_us"] / float_row["latency_us"]})
    print(format_table(rows))
    warnings = []
    target = config["final_sparsity"]
    if int8_row["sparsity"] is not None and int8_row["sparsity"] < target - 0.01:
        warnings.append(f"the int8 model's sparsity {int8_row['sparsity']:.3f} is below the "
                        f"target final_sparsity={target}")
        logging.warning("%s", warnings[-1])
    declared = []
    for name in ("baseline", "pruned"):
        path = model_dir / f"{name}.keras"
        keras_models[name].save(path)
        declared.append(saved.declare(context.write_dir, name, path))
    declared += [saved.declare(context.write_dir, name, path)
                 for name, path in files.items()]
    return {
        "test": {"accuracy": int8_row["test_accuracy"], "loss": int8_row["test_loss"],
                 "examples": int8_row["num_test_examples"]},
        "test_accuracy_is": "int8 TFLite model, through the interpreter",
        "headline_model": "int8_tflite",
        "interpreter": tflite_lib.INTERPRETER,
        "models_measured": rows,
        "models": declared,
        "warnings": warnings,
    }


def format_table(rows: list[dict]) -> str:
    header = (f"{'model':<13} {'accuracy':>8} {'sparsity':>8} {'bytes':>9} {'gzip':>9} "
              f"{'us/example':>10}")
    lines = [header, "-" * len(header)]
    for row in rows:
        latency = f"{row['latency_us']:.1f}" if row.get("latency_us") else "-"
        sparsity = f"{row['sparsity']:.3f}" if row.get("sparsity") is not None else "-"
        lines.append(f"{row['name']:<13} {row['test_accuracy']:>8.4f} {sparsity:>8} "
                     f"{row['bytes']:>9} {row['gzip_bytes']:>9} {latency:>10}")
    return "\n".join(lines)

