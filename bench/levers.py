"""Speed levers, each against its absence, side by side in one run.

    python bench/levers.py [--experiments=mnist_lenet,cifar_vgg_transfer --steps=100]

For each experiment, training images per second through its real pipeline
and model with: nothing (steps_per_execution=1, no XLA, float32), each
steps_per_execution in --spe_values, jit_compile, mixed_bfloat16 (where the
CPU or accelerator has bfloat16), and the experiment's own defaults. The
configurations take turns round after round; medians and ratios against the
plain configuration are printed. cifar_vgg_transfer runs on a CIFAR-10-format
fixture with --weights=none (throughput does not depend on the pixels).
"""

import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
from absl import app, flags  # noqa: E402

from bench import _util  # noqa: E402

flags.DEFINE_list("experiments", ["mnist_lenet", "cifar_vgg_transfer"], "Experiments.")
flags.DEFINE_list("spe_values", ["8", "32"], "steps_per_execution values to try.")
flags.DEFINE_integer("steps", 128, "Timed training steps per configuration and round.",
                     lower_bound=1)
flags.DEFINE_integer("rounds", 3, "Rounds, the configurations taking turns.", lower_bound=1)
flags.DEFINE_string("data_dir", None, "Folder of MNIST-format files; default: see _util.")
flags.DEFINE_integer("fixture_examples", 12000, "Synthetic examples when no real data.")
flags.DEFINE_integer("cifar_records_per_batch", 400, "CIFAR-10 fixture records per batch file.")
flags.DEFINE_string("results_dir", "results", "Where results/bench/ goes.")
FLAGS = flags.FLAGS


def configurations(defaults: dict) -> dict[str, dict]:
    from common.training import precision
    plain = {"steps_per_execution": 1, "jit_compile": False, "mixed_precision": "float32"}
    configs = {"plain": plain}
    for value in FLAGS.spe_values:
        configs[f"steps_per_execution={value}"] = {**plain, "steps_per_execution": int(value)}
    configs["jit_compile"] = {**plain, "jit_compile": True}
    if precision.cpu_has_bfloat16():
        configs["mixed_bfloat16"] = {**plain, "mixed_precision": "mixed_bfloat16"}
    configs["experiment defaults"] = {k: defaults[k] for k in plain}
    return configs


def _rate(experiment, pipes, config, steps) -> float:
    from common.training import optimizers, precision
    with precision.precision(config):
        splits = pipes.splits
        model = experiment.build_model(config, splits.image_shape, splits.num_classes)
        optimizers.compile_model(model, config, _util.first_learning_rate(experiment, config),
                              10_000)
        data = pipes.train.repeat()
        spe = config["steps_per_execution"]
        warm = max(spe, 2 * spe)
        model.fit(data, steps_per_epoch=warm, epochs=1, verbose=0)  # trace / compile
        timed = max(spe, steps // spe * spe)
        start = time.perf_counter()
        model.fit(data, steps_per_epoch=timed, epochs=1, verbose=0)
        return timed * config["batch_size"] / (time.perf_counter() - start)


def measure(name: str, data_dir: str, dataset: str) -> dict:
    experiment, config, pipes = _util.prepared(name, data_dir, dataset)
    configs = configurations(config)
    samples = {label: [] for label in configs}
    for _ in range(FLAGS.rounds):
        for label, levers in configs.items():
            samples[label].append(_rate(experiment, pipes, {**config, **levers}, FLAGS.steps))
    medians = {label: _util.median(values) for label, values in samples.items()}
    return {"batch_size": config["batch_size"], "configurations": configs,
            "images_per_second": samples, "median_images_per_second": medians,
            "ratio_vs_plain": {label: medians[label] / medians["plain"] for label in medians}}


def main(argv):
    figures = {}
    for name in FLAGS.experiments:
        dataset, data_dir = _util.experiment_data(name, FLAGS.data_dir, FLAGS.fixture_examples,
                                                  FLAGS.cifar_records_per_batch)
        figures[name] = measure(name, data_dir, dataset)
        for label, ratio in figures[name]["ratio_vs_plain"].items():
            rate = figures[name]["median_images_per_second"][label]
            print(f"levers: {name}: {label}: {rate:,.0f} images/s, ratio {ratio:.2f}")
    # One file per experiment list, so separate runs do not overwrite each other.
    _util.write("levers_" + "_".join(FLAGS.experiments), FLAGS.results_dir,
                {"experiments": figures, "steps": FLAGS.steps, "rounds": FLAGS.rounds})


if __name__ == "__main__":
    app.run(main)
