"""Runner overhead: launch.py's training loop against the strongest plain
`model.fit` of the same model at the same steps per execution.

    .venv/bin/python bench/runner_overhead.py [--epochs=3 --rounds=3 --batch_size=64]

Steady-state training images per second of mnist_lenet through the project's
runner (prepared data streamed or cached, tf.data pipeline, callbacks,
backups, TensorBoard) against plain tf_keras `model.fit` of the same model,
batch, data, optimizer and metrics (accuracy), compiled with the runner's
steps_per_execution (and jit_compile), in the two ways the Keras guides
feed it: NumPy arrays, and a cached, shuffled, batched, prefetched
`tf.data.Dataset` of the same arrays; the faster of the two is the
baseline ("strongest plain"). Epochs after the first of each run count,
training steps only (validation is timed apart); the three take turns,
round after round; medians are compared. Target: the runner at least 0.95
of the strongest plain loop (its own cost at most 5%).
"""

import pathlib
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
from absl import app, flags  # noqa: E402

from bench import _util  # noqa: E402

flags.DEFINE_integer("epochs", 3, "Epochs per run (the first is not counted).", lower_bound=2)
flags.DEFINE_integer("rounds", 3, "Runner/plain turns, interleaved.", lower_bound=1)
flags.DEFINE_integer("batch_size", 64, "Global batch of both.")
flags.DEFINE_string("dataset", "fashion_mnist", "Dataset (real Fashion-MNIST where installed).")
flags.DEFINE_string("data_dir", None, "Folder of the original files; default: see _util.")
flags.DEFINE_integer("fixture_examples", 6000, "Synthetic examples when no real data.")
flags.DEFINE_list("hparams", [], "Overrides for both sides, for example "
                  "steps_per_execution=1 to compare at one step per call.")
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


def plain_fit_rates(x, y, config, epochs, batch_size, feed):
    """Plain model.fit at the runner's steps per execution and metrics, fed
    from NumPy arrays (feed "arrays") or a cached tf.data pipeline
    ("tf.data")."""
    import tensorflow as tf
    import tf_keras
    import experiments
    model = experiments.get("mnist_lenet").build_model(config, x.shape[1:], 10)
    model.compile(optimizer=tf_keras.optimizers.Adam(config["learning_rate"]),
                  loss=tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"], steps_per_execution=config["steps_per_execution"],
                  jit_compile=config["jit_compile"])
    rates = _EpochRates(len(x) // batch_size * batch_size)
    if feed == "arrays":
        model.fit(x, y, batch_size=batch_size, epochs=epochs, shuffle=True, verbose=0,
                  callbacks=[rates.callback])
    else:
        ds = (tf.data.Dataset.from_tensor_slices((x, y)).cache().shuffle(len(x))
              .batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE))
        model.fit(ds, epochs=epochs, verbose=0, callbacks=[rates.callback])
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
    config = {**config, **dict(h.split("=", 1) for h in FLAGS.hparams)}
    config["steps_per_execution"] = int(config["steps_per_execution"])
    config["jit_compile"] = str(config["jit_compile"]).lower() == "true"
    splits = sources.load(dataset, data_dir=data_dir,
                          validation_fraction=float(config["validation_fraction"]))
    x = np.stack([image.numpy() for image, _ in splits.train.dataset()]).astype(np.float32)
    y = np.array([label.numpy() for _, label in splits.train.dataset()])
    rates = {"runner": [], "arrays": [], "tf.data": []}
    with tempfile.TemporaryDirectory() as scratch:
        for round_index in range(FLAGS.rounds):
            metrics = dispatch.run(RunOptions(
                experiment="mnist_lenet", dataset=dataset, data_dir=data_dir,
                epochs=FLAGS.epochs, batch_size=FLAGS.batch_size, results_dir=scratch,
                verbose=0, seed=round_index, hparams=tuple(FLAGS.hparams)))
            runner_config = metrics_config(scratch, metrics["run"])
            rates["runner"] += [row["images_per_second"] for row in metrics["history"][1:]]
            for feed in ("arrays", "tf.data"):
                rates[feed] += plain_fit_rates(x, y, runner_config, FLAGS.epochs,
                                               FLAGS.batch_size, feed)
    medians = {k: _util.median(v) for k, v in rates.items()}
    strongest = max(("arrays", "tf.data"), key=lambda k: medians[k])
    ratio = medians["runner"] / medians[strongest]
    levers = {k: runner_config[k] for k in ("steps_per_execution", "jit_compile",
                                            "mixed_precision")}
    name = "runner_overhead" + ("_" + "_".join(FLAGS.hparams) if FLAGS.hparams else "")
    _util.write(name.replace("=", "-"), FLAGS.results_dir, {
        "levers": levers, "runner_hparams": FLAGS.hparams,
        "dataset": dataset, "data_dir": data_dir, "batch_size": FLAGS.batch_size,
        "epochs": FLAGS.epochs, "rounds": FLAGS.rounds,
        "images_per_second": rates, "medians": medians, "strongest_plain": strongest,
        "ratio": ratio, "target": 0.95})
    print(f"runner_overhead: launch.py {medians['runner']:,.0f} images/s; plain model.fit "
          f"on arrays {medians['arrays']:,.0f}, on a cached tf.data pipeline "
          f"{medians['tf.data']:,.0f}; runner / strongest plain ({strongest}) {ratio:.3f} "
          f"(target 0.95; mnist_lenet, batch {FLAGS.batch_size}, {dataset}, both at {levers})")


def metrics_config(scratch: str, run: str) -> dict:
    import json
    path = pathlib.Path(scratch) / "mnist_lenet" / run / "config.json"
    return json.loads(path.read_text())["hparams"]


if __name__ == "__main__":
    app.run(main)
