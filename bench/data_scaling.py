"""How the cost of an image folder grows with its size: preparation time,
training images/s and peak resident memory for folders of three sizes.

    .venv/bin/python bench/data_scaling.py [--sizes=10000,30000,70000] [--memory_limit=2G]

Each folder holds real Fashion-MNIST images (where Debian's package
installed them; else learnable synthetic ones) upscaled to --image_size
pixels, tinted per class into RGB and saved as JPEG (quality 85) in ten class
folders, the case of issue 22 (70,000 such files: 265 MB on disk, 7.7 GB
decoded). Folders are written under --folder_root once and reused.

For each size, with an empty prepared-data folder:
  1. `launch.py --experiment=mnist_mlp --dataset=image_folder --data_dir=DIR
     --hparams=image_size=192,image_channels=3 --epochs=1` (the first run:
     it prepares the folder), inside a cgroup of --memory_limit where given;
  2. the same command again (a new --run_name): it reads the prepared copy.
Printed per size: files, the preparation's seconds and images/s (per core
too), training images/s (the epoch's), peak resident memory of each run
(wait4's ru_maxrss), and the test images scored. Then the largest size's
preparation seconds per image and peak memory against the smallest's: the
first should stay near 1 (time linear), the second near 1 (memory flat).
"""

import gzip
import json
import os
import pathlib
import shutil
import sys
import tempfile

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
from absl import app, flags  # noqa: E402

from bench import _util  # noqa: E402

flags.DEFINE_list("sizes", ["10000", "30000", "70000"], "Image files per folder.")
flags.DEFINE_integer("image_size", 192, "Pixels of each image, square.", lower_bound=8)
flags.DEFINE_string("folder_root", "/tmp/keras-experiments-scaling",
                    "Where the folders are written (and reused).")
flags.DEFINE_string("memory_limit", None, "Run each command in a cgroup v1 memory group of "
                    "this size (e.g. 2G; needs root).")
flags.DEFINE_string("experiment", "mnist_mlp", "The experiment trained.")
flags.DEFINE_integer("in_memory_size", 0, "Also train on the folder of this many files "
                     "(one of --sizes) outside any cgroup, where it fits the memory budget "
                     "and is cached in memory, and print each size's training images/s "
                     "against it (0: not).", lower_bound=0)
flags.DEFINE_string("results_dir", "results", "Where results/bench/ goes.")
FLAGS = flags.FLAGS

FASHION_MNIST = pathlib.Path("/usr/share/datasets/fashion-mnist")


def _fashion_mnist():
    """(images uint8 [70000, 28, 28], labels) of real Fashion-MNIST, or (None, None)."""
    import numpy as np
    parts = []
    for prefix in ("train", "t10k"):
        images = FASHION_MNIST / f"{prefix}-images-idx3-ubyte.gz"
        labels = FASHION_MNIST / f"{prefix}-labels-idx1-ubyte.gz"
        if not images.is_file():
            return None, None
        parts.append((np.frombuffer(gzip.open(images).read(), np.uint8, offset=16)
                      .reshape(-1, 28, 28),
                      np.frombuffer(gzip.open(labels).read(), np.uint8, offset=8)))
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def _run(args: list, env: dict, limit) -> dict:
    from tests.fixtures import memory_cgroup, run_measured
    from common.data import memory
    if limit:
        with memory_cgroup(memory.parse_size(limit)) as group:
            return run_measured(args, group, env=env)
    return run_measured(args, env=env)


def _launch_args(folder, results: pathlib.Path, run_name: str) -> list:
    return [sys.executable, str(_util.ROOT / "launch.py"), f"--experiment={FLAGS.experiment}",
            "--dataset=image_folder", f"--data_dir={folder}", f"--results_dir={results}",
            f"--hparams=image_size={FLAGS.image_size},image_channels=3", "--epochs=1",
            f"--run_name={run_name}", "--verbose=2"]


def in_memory_rate(size: int, images, labels, results: pathlib.Path) -> dict:
    """Training images/s on the folder of `size` files outside any cgroup
    (cached in memory where it fits the budget): the second of two runs, the
    first preparing it."""
    from tests.fixtures import run_measured, tinted_folder
    folder = tinted_folder(pathlib.Path(FLAGS.folder_root) / f"{size}", size,
                           FLAGS.image_size, images=images, labels=labels)
    cache = pathlib.Path(tempfile.mkdtemp(prefix="scaling-cache-", dir=FLAGS.folder_root))
    env = {**os.environ, "DATA_CACHE_DIR": str(cache)}
    try:
        for name in ("memory-first", "memory"):
            outcome = run_measured(_launch_args(folder, results, f"n{size}-{name}"), env=env)
            if outcome["returncode"] != 0:
                raise SystemExit(f"data_scaling: the in-memory run failed: "
                                 f"{outcome['stderr'][-2000:]}")
        metrics = json.loads((results / FLAGS.experiment / f"n{size}-memory"
                              / "metrics.json").read_text())
        return {"files": size, "in_memory": metrics["data_in_memory"]["train"],
                "train_images_per_second": metrics["history"][-1]["images_per_second"],
                "peak_rss_bytes": outcome["peak_rss_bytes"]}
    finally:
        shutil.rmtree(cache, ignore_errors=True)


def measure(size: int, images, labels, results: pathlib.Path) -> dict:
    from tests.fixtures import tinted_folder
    folder = tinted_folder(pathlib.Path(FLAGS.folder_root) / f"{size}", size,
                           FLAGS.image_size, images=images, labels=labels)
    cache = pathlib.Path(tempfile.mkdtemp(prefix="scaling-cache-", dir=FLAGS.folder_root))
    env = {**os.environ, "DATA_CACHE_DIR": str(cache)}
    runs = {}
    try:
        for name in ("first", "second"):
            outcome = _run(_launch_args(folder, results, f"n{size}-{name}"), env,
                           FLAGS.memory_limit)
            if outcome["returncode"] != 0:
                raise SystemExit(f"data_scaling: {name} run on {size} files failed "
                                 f"(exit {outcome['returncode']}, OOM kills "
                                 f"{outcome['oom_kills']}): {outcome['stderr'][-2000:]}")
            run_dir = results / FLAGS.experiment / f"n{size}-{name}"
            report = json.loads((run_dir / "data_report.json").read_text())
            metrics = json.loads((run_dir / "metrics.json").read_text())
            runs[name] = {"peak_rss_bytes": outcome["peak_rss_bytes"],
                          "wall_seconds": outcome["seconds"],
                          "oom_kills": outcome["oom_kills"],
                          "cache": report["cache"],
                          "train_images_per_second": metrics["history"][-1]["images_per_second"],
                          "num_test_examples": metrics["num_test_examples"],
                          "in_memory": metrics["data_in_memory"],
                          "test_accuracy": metrics["test_accuracy"],
                          "totals": report["totals"]}
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    first = runs["first"]["cache"]
    return {"files": size, "runs": runs, "prepare_seconds": first["seconds"],
            "prepare_images_per_second": size / first["seconds"],
            "prepare_images_per_second_per_core": size / first["seconds"] / (os.cpu_count() or 1)}


def main(argv):
    images, labels = _fashion_mnist()
    sizes = [int(s) for s in FLAGS.sizes]
    results = pathlib.Path(tempfile.mkdtemp(prefix="scaling-results-"))
    figures = {}
    try:
        for size in sizes:
            f = figures[size] = measure(size, images, labels, results)
            first, second = f["runs"]["first"], f["runs"]["second"]
            print(f"data_scaling: {size:,} files: prepared in {f['prepare_seconds']:.1f} s "
                  f"({f['prepare_images_per_second']:,.0f} images/s, "
                  f"{f['prepare_images_per_second_per_core']:,.0f} per core); training "
                  f"{first['train_images_per_second']:,.0f} images/s; peak RSS "
                  f"{first['peak_rss_bytes'] / 2**20:,.0f} MiB (second run "
                  f"{second['peak_rss_bytes'] / 2**20:,.0f} MiB, preparation "
                  f"{'skipped' if second['cache']['hit'] else 'REPEATED'}, "
                  f"{second['train_images_per_second']:,.0f} images/s); test images scored "
                  f"{first['num_test_examples']:,} of {first['totals']['test']:,}")
        reference = (in_memory_rate(FLAGS.in_memory_size, images, labels, results)
                     if FLAGS.in_memory_size else None)
    finally:
        shutil.rmtree(results, ignore_errors=True)
    if reference:
        for size in sizes:
            rate = figures[size]["runs"]["first"]["train_images_per_second"]
            figures[size]["against_in_memory"] = rate / reference["train_images_per_second"]
        print(f"data_scaling: in memory ({reference['files']:,} files, no cgroup): "
              f"{reference['train_images_per_second']:,.0f} images/s, cached in memory: "
              f"{reference['in_memory']}; each size against it: " + ", ".join(
                  f"{size:,} x{figures[size]['against_in_memory']:.2f}" for size in sizes))
    small, large = figures[sizes[0]], figures[sizes[-1]]
    time_ratio = (large["prepare_seconds"] / large["files"]) / (
        small["prepare_seconds"] / small["files"])
    memory_ratio = (large["runs"]["first"]["peak_rss_bytes"]
                    / small["runs"]["first"]["peak_rss_bytes"])
    print(f"data_scaling: {sizes[-1]:,} against {sizes[0]:,} files: preparation time per "
          f"image x{time_ratio:.2f} (linear: 1), peak memory x{memory_ratio:.2f} (flat: 1)")
    _util.write("data_scaling", FLAGS.results_dir, {
        "sizes": sizes, "image_size": FLAGS.image_size, "experiment": FLAGS.experiment,
        "memory_limit": FLAGS.memory_limit, "real_fashion_mnist": images is not None,
        "figures": figures, "in_memory_reference": reference,
        "time_per_image_ratio": time_ratio,
        "peak_memory_ratio": memory_ratio})


if __name__ == "__main__":
    app.run(main)
