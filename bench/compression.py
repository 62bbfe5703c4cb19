"""Compression: int8 against float TFLite, latency per example and size.

    python bench/compression.py [--run=results/pruning_qat/<run>]

Takes the TFLite files of a finished pruning_qat run (default: the newest in
results/pruning_qat/; with none, it first runs a small pipeline on fixture
data) and measures them side by side, in turns, one thread, with XNNPACK and
with TFLite's built-in kernels; prints the int8/float ratios of latency, file
size and gzip size.
"""

import pathlib
import sys
import tempfile

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
from absl import app, flags  # noqa: E402

from bench import _util  # noqa: E402

flags.DEFINE_string("run", None, "A finished pruning_qat run folder.")
flags.DEFINE_integer("invocations", 1000, "Invocations per round per model.", lower_bound=1)
flags.DEFINE_integer("rounds", 7, "Rounds, the models taking turns.", lower_bound=1)
flags.DEFINE_string("results_dir", "results", "Where results/bench/ goes (and runs are found).")
FLAGS = flags.FLAGS


def _newest_run(results_dir: pathlib.Path):
    runs = sorted((p.parent for p in (results_dir / "pruning_qat").glob("*/metrics.json")),
                  key=lambda p: p.stat().st_mtime)
    return runs[-1] if runs else None


def _small_run(scratch: str) -> pathlib.Path:
    from common.config.options import RunOptions
    from common.modes import dispatch
    data_dir = _util.mnist_like_data(None, "mnist", 600)[1]
    metrics = dispatch.run(RunOptions(
        experiment="pruning_qat", data_dir=data_dir, results_dir=scratch, verbose=0,
        batch_size=32, hparams=("baseline_epochs=1", "pruning_epochs=1", "qat_epochs=1",
                                "pruning_frequency=2")))
    return pathlib.Path(scratch) / "pruning_qat" / metrics["run"]


def main(argv):
    import numpy as np
    from common.deploy import tflite as tflite_lib

    with tempfile.TemporaryDirectory() as scratch:
        run = pathlib.Path(FLAGS.run) if FLAGS.run else _newest_run(pathlib.Path(FLAGS.results_dir))
        if run is None:
            print("compression: no finished pruning_qat run; running a small one on fixture data")
            run = _small_run(scratch)
        files = {"float": run / "model" / "baseline_float.tflite",
                 "int8": run / "model" / "pqat_int8.tflite"}
        missing = [str(p) for p in files.values() if not p.exists()]
        if missing:
            sys.exit(f"compression: error: {missing[0]} does not exist")
        example = np.random.default_rng(0).uniform(0, 255, (28, 28, 1)).astype(np.float32)
        xnnpack = tflite_lib.latency_us(files, example, invocations=FLAGS.invocations,
                                    rounds=FLAGS.rounds)
        builtin = tflite_lib.latency_us(files, example, invocations=FLAGS.invocations,
                                    rounds=FLAGS.rounds, xnnpack=False)
        sizes = {name: tflite_lib.file_sizes(path) for name, path in files.items()}
    figures = {
        "run": str(run), "interpreter": tflite_lib.INTERPRETER,
        "latency_us_xnnpack": xnnpack, "latency_us_builtin": builtin, "sizes": sizes,
        "latency_ratio_xnnpack": xnnpack["int8"] / xnnpack["float"],
        "latency_ratio_builtin": builtin["int8"] / builtin["float"],
        "size_ratio": sizes["float"]["bytes"] / sizes["int8"]["bytes"],
        "gzip_ratio_vs_float_file": sizes["float"]["bytes"] / sizes["int8"]["gzip_bytes"],
    }
    _util.write("compression", FLAGS.results_dir, figures)
    print(f"compression: int8/float latency {figures['latency_ratio_xnnpack']:.2f} with XNNPACK "
          f"({xnnpack['int8']:.1f} vs {xnnpack['float']:.1f} us), "
          f"{figures['latency_ratio_builtin']:.2f} with built-in kernels; float/int8 size "
          f"{figures['size_ratio']:.2f}, float/int8-gzip {figures['gzip_ratio_vs_float_file']:.1f}")


if __name__ == "__main__":
    app.run(main)
