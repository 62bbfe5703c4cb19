"""Runner overhead: launch.py's training loop against the textbook model.fit.

    python bench/runner_overhead.py [--epochs=3 --rounds=2 --batch_size=64]

Steady-state training images per second of mnist_lenet through the project's
runner (tf.data pipeline, callbacks, backups, TensorBoard) against a minimal
tf_keras `model.fit` on in-memory arrays of the same model, batch and data.
Epochs after the first of each run count, training steps only (validation
is timed apart); the two take turns, round after round; the ratio of medians
is printed. Targets: at least 0.95 without speed levers
(`--hparams=steps_per_execution=1`), at least 1.2 with the experiment's
defaults.
"""

import pathlib
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
from absl import app, flags  # noqa: E402

from bench import _util  # noqa: E402

flags.DEFINE_integer("epochs", 3, "Epochs per run (the first is not counted).", lower_bound=2)
flags.DEFINE_integer("rounds", 2, "Runner/plain pairs, interleaved.", lower_bound=1)
flags.DEFINE_integer("batch_size", 64, "Global batch of both.")
flags.DEFINE_string("dataset", "fashion_mnist", "Dataset (real Fashion-MNIST where installed).")
flags.DEFINE_string("data_dir", None, "Folder of the original files; default: see _util.")
flags.DEFINE_integer("fixture_examples", 6000, "Synthetic examples when no real data.")
flags.DEFINE_list("hparams", [], "Overrides for the runner's side only, for example "
                  "steps_per_execution=1 to measure the runner without its speed levers.")
flags.DEFINE_string("results_dir", "results", "Where results/bench/ goes.")
FLAGS = flags.FLAGS


class _EpochRates:
    """Images per second of each epoch of a plain fit."""

    def __init__(self, images_per_epoch):
        import tf_keras

        outer = self

        class Callback(tf_keras.callbacks.Callback):
            def on_epoch_begin(self, epoch, logs=None):
                outer.start = time.perf_counter()

            def on_epoch_end(self, epoch, logs=None):
                outer.rates.append(images_per_epoch / (time.perf_counter() - outer.start))

        self.rates, self.start, self.callback = [], 0.0, Callback()


def plain_fit_rates(x, y, config, epochs, batch_size):
    """The way the textbooks do it: compile, fit on NumPy arrays."""
    import tf_keras
    import experiments
    model = experiments.get("mnist_lenet").build_model(config, x.shape[1:], 10)
    model.compile(optimizer=tf_keras.optimizers.Adam(config["learning_rate"]),
                  loss=tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    rates = _EpochRates(len(x))
    model.fit(x, y, batch_size=batch_size, epochs=epochs, shuffle=True, verbose=0,
              callbacks=[rates.callback])
    return rates.rates[1:]


def main(argv):
    import numpy as np
    import experiments
    from common.config import hparams
    from common.config.options import RunOptions
    from common.data import sources
    from common.modes import dispatch

    dataset, data_dir = _util.mnist_like_data(FLAGS.data_dir, FLAGS.dataset,
                                              FLAGS.fixture_examples)
    config = hparams.defaults(experiments.get("mnist_lenet").get_config())
    splits = sources.load(dataset, data_dir=data_dir, validation_fraction=config["validation_fraction"])
    x = np.stack([image.numpy() for image, _ in splits.train.dataset()]).astype(np.float32)
    y = np.array([label.numpy() for _, label in splits.train.dataset()])
    launched, plain = [], []
    with tempfile.TemporaryDirectory() as scratch:
        for round_index in range(FLAGS.rounds):
            metrics = dispatch.run(RunOptions(
                experiment="mnist_lenet", dataset=dataset, data_dir=data_dir,
                epochs=FLAGS.epochs, batch_size=FLAGS.batch_size, results_dir=scratch,
                verbose=0, seed=round_index, hparams=tuple(FLAGS.hparams)))
            runner_config = metrics_config(scratch, metrics["run"])
            launched += [row["images_per_second"] for row in metrics["history"][1:]]
            plain += plain_fit_rates(x, y, config, FLAGS.epochs, FLAGS.batch_size)
    ratio = _util.median(launched) / _util.median(plain)
    levers = {k: runner_config[k] for k in ("steps_per_execution", "jit_compile",
                                            "mixed_precision")}
    name = "runner_overhead" + ("_" + "_".join(FLAGS.hparams) if FLAGS.hparams else "")
    _util.write(name.replace("=", "-"), FLAGS.results_dir, {
        "runner_levers": levers, "runner_hparams": FLAGS.hparams,
        "dataset": dataset, "data_dir": data_dir, "batch_size": FLAGS.batch_size,
        "epochs": FLAGS.epochs, "rounds": FLAGS.rounds,
        "runner_images_per_second": launched, "plain_images_per_second": plain,
        "ratio": ratio, "target": 0.95})
    print(f"runner_overhead: launch.py {_util.median(launched):,.0f} images/s, plain "
          f"model.fit {_util.median(plain):,.0f} images/s, ratio {ratio:.3f} "
          f"(mnist_lenet, batch {FLAGS.batch_size}, {dataset}; runner levers {levers})")


def metrics_config(scratch: str, run: str) -> dict:
    import json
    path = pathlib.Path(scratch) / "mnist_lenet" / run / "config.json"
    return json.loads(path.read_text())["hparams"]


if __name__ == "__main__":
    app.run(main)
