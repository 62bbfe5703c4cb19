"""Replicas: MirroredStrategy over N devices against the default strategy.

    python bench/replicas.py [--num_devices=2 --epochs=3 --rounds=2]

Runs `launch.py --experiment=mnist_lenet` as a user would, with the default
strategy and with `--strategy=mirrored --num_cpu_devices=N` (logical CPUs on
a machine without accelerators; on a GPU machine MirroredStrategy takes the
GPUs and N is ignored), in turns, and prints the ratio of steady-state
training images per second (mirrored / default) and, per replica, the
scaling efficiency (ratio / replicas).
"""

import json
import pathlib
import subprocess
import sys
import tempfile

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
from absl import app, flags  # noqa: E402

from bench import _util  # noqa: E402

flags.DEFINE_integer("num_devices", 2, "Logical CPU devices for MirroredStrategy.", lower_bound=1)
flags.DEFINE_integer("epochs", 3, "Epochs per run (the first is not counted).", lower_bound=2)
flags.DEFINE_integer("rounds", 2, "Default/mirrored pairs, interleaved.", lower_bound=1)
flags.DEFINE_integer("batch_size", 64, "Global batch.")
flags.DEFINE_string("data_dir", None, "Folder of MNIST-format files; default: see _util.")
flags.DEFINE_integer("fixture_examples", 6000, "Synthetic examples when no real data.")
flags.DEFINE_string("results_dir", "results", "Where results/bench/ goes.")
FLAGS = flags.FLAGS


def _launch(extra: list[str], dataset: str, data_dir: str, scratch: str, name: str) -> dict:
    command = [sys.executable, str(_util.ROOT / "launch.py"), "--experiment=mnist_lenet",
               f"--dataset={dataset}", f"--data_dir={data_dir}", f"--epochs={FLAGS.epochs}",
               f"--batch_size={FLAGS.batch_size}", f"--results_dir={scratch}",
               f"--run_name={name}", "--verbose=0", *extra]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"replicas: launch.py failed: {done.stderr.strip().splitlines()[-1]}")
    return json.loads((pathlib.Path(scratch) / "mnist_lenet" / name / "metrics.json").read_text())


def main(argv):
    dataset, data_dir = _util.mnist_like_data(FLAGS.data_dir, "fashion_mnist",
                                              FLAGS.fixture_examples)
    default, mirrored, replicas = [], [], None
    with tempfile.TemporaryDirectory() as scratch:
        for index in range(FLAGS.rounds):
            one = _launch([], dataset, data_dir, scratch, f"default-{index}")
            many = _launch(["--strategy=mirrored", f"--num_cpu_devices={FLAGS.num_devices}"],
                           dataset, data_dir, scratch, f"mirrored-{index}")
            default += [row["images_per_second"] for row in one["history"][1:]]
            mirrored += [row["images_per_second"] for row in many["history"][1:]]
            replicas = many["num_replicas"]
    ratio = _util.median(mirrored) / _util.median(default)
    _util.write("replicas", FLAGS.results_dir, {
        "dataset": dataset, "replicas": replicas, "batch_size": FLAGS.batch_size,
        "default_images_per_second": default, "mirrored_images_per_second": mirrored,
        "ratio": ratio, "scaling_efficiency": ratio / replicas})
    print(f"replicas: default {_util.median(default):,.0f} images/s, mirrored over "
          f"{replicas} replicas {_util.median(mirrored):,.0f} images/s, ratio {ratio:.2f}, "
          f"scaling efficiency {ratio / replicas:.2f}")


if __name__ == "__main__":
    app.run(main)
