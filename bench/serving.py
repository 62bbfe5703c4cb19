"""Serving speed: Keras against the exported SavedModel and TFLite, side by side.

    python bench/serving.py [--runs=results/mnist_lenet/<run>,...]

For each experiment's model, the latency per example at batch 1 (µs) and
the throughput at --large_batch (images/s) of:

  keras         model.predict_on_batch (float32 pixels in, logits out)
  saved_model   export/saved_model/1's serving_default signature (uint8
                images in, probabilities and classes out), loaded with
                tf.saved_model.load as a server or a script would
  tflite_float  export/model_float.tflite through the LiteRT interpreter
  tflite_int8   model/pqat_int8.tflite, where the run is a pruning_qat run

The paths take turns round after round, each turn timing enough calls to
last --seconds, so drift on a shared machine hits them alike. Reported: the
median time of each path, and its ratio against Keras, the median over the
rounds of (Keras time / path time) in the same round, so that load from
elsewhere weighs on both sides of each ratio: above 1 is faster than Keras
(for latency, Keras µs / path µs; for throughput, path images/s / Keras
images/s).
Inputs are prepared before timing (random pixels: speed does not depend on
them). Runs come from --runs; every experiment in --experiments
without one gets a tiny run (one epoch per stage) trained on fixture data
first (cifar_vgg_transfer with --weights=none on a CIFAR-10-format fixture),
whose export/ the runner writes.
"""

import math
import os
import pathlib
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
from absl import app, flags  # noqa: E402

from bench import _util  # noqa: E402

flags.DEFINE_list("experiments", ["mnist_lenet", "cifar_vgg_transfer", "pruning_qat"],
                  "Experiments to measure.")
flags.DEFINE_list("runs", [], "Finished run folders (results/<experiment>/<run>) to measure; "
                  "an experiment in --experiments without one gets a tiny run.")
flags.DEFINE_integer("large_batch", 256, "Batch of the throughput measurement.", lower_bound=1)
flags.DEFINE_integer("rounds", 9, "Rounds, the paths taking turns.", lower_bound=1)
flags.DEFINE_float("seconds", 0.3, "Time each path runs per turn (at least one call).",
                   lower_bound=0)
flags.DEFINE_integer("tflite_threads", 0, "TFLite interpreter threads; 0: one per CPU "
                     "core, as TensorFlow uses.", lower_bound=0)
flags.DEFINE_string("data_dir", None, "Folder of MNIST-format files for the tiny runs; "
                    "default: a synthetic fixture.")
flags.DEFINE_integer("fixture_examples", 600, "Synthetic MNIST-format training examples.",
                     lower_bound=100)
flags.DEFINE_integer("cifar_records_per_batch", 60, "CIFAR-10 fixture records per batch file.",
                     lower_bound=20)
flags.DEFINE_string("results_dir", "results", "Where results/bench/ goes.")
FLAGS = flags.FLAGS

TINY = {
    "mnist_lenet": dict(epochs=1, batch_size=32),
    "cifar_vgg_transfer": dict(weights="none", batch_size=16,
                               hparams=("phase1_epochs=1", "phase2_epochs=1")),
    "pruning_qat": dict(batch_size=32, hparams=(
        "baseline_epochs=1", "pruning_epochs=1", "qat_epochs=1", "pruning_frequency=2",
        "latency_invocations=20", "latency_rounds=1")),
}


def _tiny_run(name: str, scratch: str) -> pathlib.Path:
    from common.config.options import RunOptions
    from common.modes import dispatch
    if name == "cifar_vgg_transfer":
        dataset, data_dir = "cifar10", _util.cifar_fixture(FLAGS.cifar_records_per_batch)
    else:
        dataset, data_dir = _util.mnist_like_data(FLAGS.data_dir, "mnist",
                                                  FLAGS.fixture_examples)
    settings = TINY.get(name, dict(epochs=1))
    print(f"serving: {name}: no run given; training a tiny one on {data_dir}", flush=True)
    metrics = dispatch.run(RunOptions(experiment=name, dataset=dataset, data_dir=data_dir,
                                    results_dir=scratch, run_name="bench", verbose=0,
                                    **settings))
    return pathlib.Path(scratch) / name / metrics["run"]


class TFLiteBatch:
    """A TFLite model (float pixels in, logits out) run on whole batches:
    the input resized to the batch, float<->int8 handled at both ends."""

    def __init__(self, path: pathlib.Path, batch: int, threads: int):
        from common.deploy import tflite as tflite_lib
        self.interpreter = tflite_lib.interpreter(path, threads)
        detail = self.interpreter.get_input_details()[0]
        self.interpreter.resize_tensor_input(detail["index"], [batch, *detail["shape"][1:]])
        self.interpreter.allocate_tensors()
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]

    def prepare(self, images):
        import numpy as np
        batch = images.astype(np.float32)
        if self.input["dtype"] == np.int8:
            scale, zero_point = self.input["quantization"]
            batch = np.clip(np.round(batch / scale + zero_point), -128, 127).astype(np.int8)
        return batch

    def __call__(self, prepared):
        self.interpreter.set_tensor(self.input["index"], prepared)
        self.interpreter.invoke()
        return self.interpreter.get_tensor(self.output["index"])


def paths_of(run: pathlib.Path, batch: int, threads: int, images) -> dict:
    """{path name: a function of no arguments running one call at `batch`}."""
    import numpy as np
    import tensorflow as tf
    from common.deploy import serving
    from common.runs import saved
    # Uncompiled: a model compiled with steps_per_execution > 1 (mnist_lenet's
    # 128) fails predict_on_batch (its loop wants that many batches).
    model = saved.load_keras_model(run, compile=False, scope=_load_scope(run))
    served = run / serving.SAVED_MODEL_PATH
    if not served.is_dir():
        sys.exit(f"serving: error: {run} has no {serving.SAVED_MODEL_PATH}; run launch.py "
                 f"--mode=export --run_name={run.name} first")
    serve = tf.saved_model.load(str(served)).signatures["serving_default"]
    as_float = images[:batch].astype(np.float32)
    as_uint8 = tf.constant(images[:batch])
    calls = {"keras": lambda: model.predict_on_batch(as_float),
             "saved_model": lambda: serve(as_uint8)}
    tflite = {"tflite_float": run / serving.TFLITE_PATH}
    for entry in saved.declared_models(run):
        if entry["name"] == "int8_tflite":  # pruning_qat's int8 model
            tflite["tflite_int8"] = run / entry["path"]
    for name, path in tflite.items():
        interpreter = TFLiteBatch(path, batch, threads)
        prepared = interpreter.prepare(images[:batch])
        calls[name] = lambda run_tflite=interpreter, x=prepared: run_tflite(x)
    return calls


def side_by_side(calls: dict, rounds: int, seconds: float) -> dict[str, list[float]]:
    """Seconds per call of each function, one sample per round, the
    functions taking turns; each turn repeats its call for `seconds`."""
    repeats = {}
    for name, call in calls.items():  # warm-up (tracing, allocation), then calibrate
        call()
        start = time.perf_counter()
        call()
        repeats[name] = max(1, math.ceil(seconds / max(time.perf_counter() - start, 1e-7)))
    samples = {name: [] for name in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            start = time.perf_counter()
            for _ in range(repeats[name]):
                call()
            samples[name].append((time.perf_counter() - start) / repeats[name])
    return samples


def measure(run: pathlib.Path) -> dict:
    import numpy as np
    from common.runs import saved
    config = saved.read_config(run)
    shape = tuple(config.get("image_shape") or
                  saved.load_keras_model(run, compile=False,
                                         scope=_load_scope(run)).input_shape[1:])
    images = np.random.default_rng(0).integers(0, 256, (FLAGS.large_batch, *shape),
                                               dtype=np.uint8)
    threads = FLAGS.tflite_threads or os.cpu_count()
    single = side_by_side(paths_of(run, 1, threads, images), FLAGS.rounds, FLAGS.seconds)
    large = side_by_side(paths_of(run, FLAGS.large_batch, threads, images), FLAGS.rounds,
                         FLAGS.seconds)
    return {
        "run": str(run), "image_shape": list(shape), "large_batch": FLAGS.large_batch,
        "tflite_threads": threads,
        "latency_us_batch_1": {n: _util.median(v) * 1e6 for n, v in single.items()},
        "images_per_second_large_batch": {n: FLAGS.large_batch / _util.median(v)
                                          for n, v in large.items()},
        "latency_ratio_vs_keras": paired_ratios(single),
        "throughput_ratio_vs_keras": paired_ratios(large),
        "samples_seconds_per_call": {"batch_1": single, "large_batch": large},
    }


def paired_ratios(samples: dict[str, list[float]]) -> dict[str, float]:
    """Per path, the median over rounds of Keras' time / its time that round."""
    return {name: _util.median([k / v for k, v in zip(samples["keras"], values)])
            for name, values in samples.items()}


def _load_scope(run: pathlib.Path):
    """The custom objects the run's experiment loads its models in (its
    load_scope hook), or None."""
    import experiments
    return experiments.hook(experiments.get(_experiment_of(run)), "load_scope")


def _experiment_of(run: pathlib.Path) -> str:
    from common.runs import saved
    return saved.read_config(run).get("experiment") or run.parent.name


def main(argv):
    from common.errors import UserError
    from common.runs import saved
    try:
        runs = {}
        for folder in FLAGS.runs:
            run = saved.finished(pathlib.Path(folder).expanduser())
            runs[_experiment_of(run)] = run
    except UserError as e:
        sys.exit(f"serving: error: {e}")
    figures = {}
    with tempfile.TemporaryDirectory() as scratch:
        for name in FLAGS.experiments:
            if name not in runs:
                runs[name] = _tiny_run(name, scratch)
        for name, run in runs.items():
            figures[name] = row = measure(run)
            for label, key, unit, ratio in (
                    ("batch 1", "latency_us_batch_1", "us/example", "latency_ratio_vs_keras"),
                    (f"batch {FLAGS.large_batch}", "images_per_second_large_batch",
                     "images/s", "throughput_ratio_vs_keras")):
                cells = [f"{path} {value:,.1f} {unit} ({row[ratio][path]:.2f}x keras)"
                         for path, value in row[key].items()]
                print(f"serving: {name}: {label}: " + ", ".join(cells), flush=True)
    _util.write("serving", FLAGS.results_dir,
                {"experiments": figures, "rounds": FLAGS.rounds, "seconds": FLAGS.seconds})


if __name__ == "__main__":
    app.run(main)
