"""Streaming against in-memory: training images/s on the same data, read
from memory (the split cached after its first pass) and streamed from the
prepared copy's shards every epoch (--data_memory_budget=0).

    .venv/bin/python bench/streaming.py [--experiments=mnist_mlp,mnist_lenet] [--rounds=3]

For each experiment: one model, compiled as the runner compiles it (its
speed levers on), trained alternately from the two pipelines (rounds x 2
fits of --epochs epochs each; the first epoch of each fit, which traces the
step, is not counted). Prints the median training images/s of each path and
their ratio. Target: at least 0.9 (issue 22). The data is real Fashion-MNIST
where Debian's package installed it, else a synthetic MNIST-format fixture.
"""

import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
from absl import app, flags  # noqa: E402

from bench import _util  # noqa: E402

flags.DEFINE_list("experiments", ["mnist_mlp", "mnist_lenet"], "Experiments to measure.")
flags.DEFINE_integer("rounds", 3, "Fits per path, alternated.", lower_bound=1)
flags.DEFINE_integer("epochs", 3, "Epochs per fit (the first is not counted).", lower_bound=2)
flags.DEFINE_string("data_dir", None, "Folder of MNIST-format files; default: see _util.")
flags.DEFINE_integer("fixture_examples", 12000, "Synthetic examples when no real data.")
flags.DEFINE_string("results_dir", "results", "Where results/bench/ goes.")
FLAGS = flags.FLAGS

TARGET = 0.9


def measure(name: str, dataset: str, data_dir: str) -> dict:
    import tf_keras
    import experiments
    from common.config import resolve
    from common.config.options import RunOptions
    from common.data import memory, pipeline
    from common.training import optimizers
    from common.training import run as training_run

    experiment = experiments.get(name)
    config = resolve.resolve_config(experiment, RunOptions(
        experiment=name, dataset=dataset, data_dir=data_dir))
    splits = training_run.load_data(config, data_dir)
    model = experiment.build_model(config, splits.image_shape, splits.num_classes)
    optimizers.compile_model(model, config, config["learning_rate"], 10_000)
    rates = {"memory": [], "stream": []}

    class Timer(tf_keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            if epoch > 0:
                rates[self.path].append(steps * config["batch_size"]
                                        / (time.perf_counter() - self.start))

    timer = Timer()
    for _ in range(FLAGS.rounds):
        for path, setting in (("memory", "auto"), ("stream", "0")):
            pipes = pipeline.pipelines(splits, config["batch_size"],
                                       budget=memory.budget(setting))
            assert all(pipes.in_memory.values()) == (path == "memory")
            steps = pipes.steps_per_epoch
            timer.path = path
            model.fit(pipes.train, steps_per_epoch=steps, epochs=FLAGS.epochs, verbose=0,
                      callbacks=[timer])
    memory_rate, stream_rate = _util.median(rates["memory"]), _util.median(rates["stream"])
    return {"memory_images_per_second": rates["memory"],
            "stream_images_per_second": rates["stream"],
            "ratio": stream_rate / memory_rate, "batch_size": config["batch_size"],
            "steps_per_execution": config["steps_per_execution"]}


def main(argv):
    dataset, data_dir = _util.mnist_like_data(FLAGS.data_dir, "fashion_mnist",
                                              FLAGS.fixture_examples)
    figures = {}
    for name in FLAGS.experiments:
        f = figures[name] = measure(name, dataset, data_dir)
        print(f"streaming: {name}: in memory {_util.median(f['memory_images_per_second']):,.0f} "
              f"images/s, streamed {_util.median(f['stream_images_per_second']):,.0f} images/s, "
              f"ratio {f['ratio']:.3f} (target {TARGET}; {dataset}, batch {f['batch_size']})")
    _util.write("streaming", FLAGS.results_dir, {
        "dataset": dataset, "data_dir": data_dir, "rounds": FLAGS.rounds,
        "epochs": FLAGS.epochs, "experiments": figures, "target": TARGET})


if __name__ == "__main__":
    app.run(main)
