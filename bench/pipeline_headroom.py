"""Input pipeline headroom: how much faster the input is than the model eats.

    python bench/pipeline_headroom.py [--steps=50]
    python bench/pipeline_headroom.py --image_folder=PATH   # your own images

For each experiment's training pipeline (with its augmentation), images per
second of the pipeline alone (after the first pass fills its cache) against
images per second the model trains on, fed from one cached batch so the
input costs nothing. Ratio printed per experiment. Target: at least 3.
mnist_lenet and pruning_qat share one pipeline; cifar_vgg_transfer runs on a
CIFAR-10-format fixture (real CIFAR-10 cannot be downloaded here), with
--weights=none and its default input size.

With --image_folder=PATH each experiment is measured on that folder
(--dataset=image_folder) instead, and the first read, which prepares the
folder (decoding every file and writing the prepared copy's shards) with an
empty cache, is timed too: its images per second, per core, and against the
model's say whether even a run without a prepared copy waits for its data.
"""

import os
import pathlib
import sys
import tempfile
import time
from unittest import mock

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
from absl import app, flags  # noqa: E402

from bench import _util  # noqa: E402

flags.DEFINE_integer("steps", 50, "Training steps timed per model (after warm-up).", lower_bound=2)
flags.DEFINE_list("experiments", ["mnist_lenet", "cifar_vgg_transfer"], "Experiments to measure.")
flags.DEFINE_string("data_dir", None, "Folder of MNIST-format files; default: see _util.")
flags.DEFINE_integer("fixture_examples", 6000, "Synthetic MNIST-format examples when no real data.")
flags.DEFINE_integer("cifar_records_per_batch", 400, "CIFAR-10 fixture records per batch file.")
flags.DEFINE_string("results_dir", "results", "Where results/bench/ goes.")
flags.DEFINE_string("image_folder", None, "Measure on this folder of class folders of "
                    "images (--dataset=image_folder) instead.")
FLAGS = flags.FLAGS


def _images_per_second(dataset, batches: int, batch_size: int) -> float:
    iterator = iter(dataset)
    next(iterator)  # start-up
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    return batches * batch_size / (time.perf_counter() - start)


def measure(name: str, data_dir: str, dataset: str) -> dict:
    from common.data import image_folder
    from common.training import run as training_run
    from common.training import optimizers

    experiment, config, pipes = _util.prepared(name, data_dir, dataset)
    figures = {}
    if dataset == image_folder.DATASET:  # the first read, with an empty cache
        with tempfile.TemporaryDirectory() as empty, mock.patch.dict(
                os.environ, {image_folder.CACHE_ENV: empty}):
            cold = training_run.load_data(config, data_dir)
        cache = cold.report["cache"]
        figures["first_read_images_per_second"] = cache["decoded_files"] / cache["seconds"]
        figures["first_read_images_per_second_per_core"] = (
            figures["first_read_images_per_second"] / (os.cpu_count() or 1))
    batch = config["batch_size"]
    # A full pass fills the cache; the rate after it is the steady state.
    for _ in pipes.train.take(pipes.steps_per_epoch):
        pass
    batches = min(pipes.steps_per_epoch - 1, max(FLAGS.steps * 4, 20))
    pipeline_rate = _images_per_second(pipes.train, batches, batch)

    splits = pipes.splits
    model = experiment.build_model(config, splits.image_shape, splits.num_classes)
    optimizers.compile_model(model, config, _util.first_learning_rate(experiment, config), 1000)
    one_batch = pipes.train.take(1).cache().repeat()
    model.fit(one_batch, steps_per_epoch=5, epochs=1, verbose=0)  # trace
    start = time.perf_counter()
    model.fit(one_batch, steps_per_epoch=FLAGS.steps, epochs=1, verbose=0)
    model_rate = FLAGS.steps * batch / (time.perf_counter() - start)
    if figures:
        figures["first_read_ratio"] = figures["first_read_images_per_second"] / model_rate
    return {"pipeline_images_per_second": pipeline_rate,
            "model_images_per_second": model_rate,
            "ratio": pipeline_rate / model_rate, "batch_size": batch,
            "data_source": splits.source, **figures}


def main(argv):
    figures = {}
    for name in FLAGS.experiments:
        if FLAGS.image_folder:
            dataset, data_dir = "image_folder", FLAGS.image_folder
        else:
            dataset, data_dir = _util.experiment_data(name, FLAGS.data_dir,
                                                      FLAGS.fixture_examples,
                                                      FLAGS.cifar_records_per_batch)
        figures[name] = measure(name, data_dir, dataset)
        f = figures[name]
        first = (f" (first read, preparing the folder: "
                 f"{f['first_read_images_per_second']:,.0f} images/s, "
                 f"{f['first_read_images_per_second_per_core']:,.0f} per core on "
                 f"{os.cpu_count()} cores; ratio {f['first_read_ratio']:.1f})"
                 if "first_read_ratio" in f else "")
        print(f"pipeline_headroom: {name}: pipeline {f['pipeline_images_per_second']:,.0f} "
              f"images/s, model {f['model_images_per_second']:,.0f} images/s, "
              f"ratio {f['ratio']:.1f}{first}")
    _util.write("pipeline_headroom", FLAGS.results_dir,
                {"experiments": figures, "steps": FLAGS.steps, "target": 3.0,
                 "image_folder": FLAGS.image_folder})


if __name__ == "__main__":
    app.run(main)
