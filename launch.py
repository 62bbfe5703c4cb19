"""Runs any experiment by name.

    python launch.py --experiment=mnist_lenet
    python launch.py --experiment=mnist_lenet --dataset=fashion_mnist --epochs=5
    python launch.py --experiment=mnist_lenet --strategy=mirrored --num_cpu_devices=2

The logic lives in common/training.py, importable and tested; this file only
turns flags into RunOptions and a user's mistake into one line on stderr.
"""

import sys

import common  # noqa: F401  (selects tf_keras before TensorFlow is imported)
from absl import app, flags, logging

import experiments
from common.errors import UserError

STRATEGIES = ("default", "one_device", "mirrored", "multi_worker_mirrored", "tpu")
MODES = ("train", "eval", "tune")

flags.DEFINE_enum("experiment", None, experiments.names(), "Experiment (folder under experiments/).")
flags.DEFINE_enum("strategy", "default", STRATEGIES, "tf.distribute strategy.")
flags.DEFINE_string("tpu", "", "TPU name or grpc:// address; empty or 'local' on a TPU VM.")
flags.DEFINE_string("device", "cpu", "Device for --strategy=one_device: cpu, gpu or gpu:N.")
flags.DEFINE_integer("num_cpu_devices", 0, "Split the CPU into N logical devices "
                     "(MirroredStrategy then runs N replicas without accelerators).",
                     lower_bound=0)
flags.DEFINE_enum("mode", "train", MODES, "train; eval (the saved model of --run_name); "
                  "tune (a Keras Tuner sweep of the experiment's search space).")
flags.DEFINE_integer("epochs", None, "Override the experiment's epochs.", lower_bound=1)
flags.DEFINE_integer("batch_size", None, "Global batch size (split across replicas).",
                     lower_bound=1)
flags.DEFINE_list("hparams", [], "Hyperparameter overrides: name=value,name=value.")
flags.DEFINE_string("dataset", None, "Override the experiment's dataset (a TFDS name).")
flags.DEFINE_string("weights", None, "Pretrained weights, for experiments that take "
                    "them: imagenet, none, or the path of a local weights file.")
flags.DEFINE_string("init_from", None, "A finished run folder (results/<experiment>/<run>) "
                    "whose model an experiment starts from (pruning_qat).")
flags.DEFINE_string("data_dir", None, "TFDS data_dir, or a folder of the original files.")
flags.DEFINE_string("results_dir", "results", "Where run folders are created.")
flags.DEFINE_string("run_name", None, "Run folder name; an unfinished run of that "
                    "name is resumed. Default: a new timestamped folder.")
flags.DEFINE_integer("seed", 0, "Random seed.")
flags.DEFINE_integer("steps_per_execution", None, "Training steps per call into the "
                     "graph (Keras compile); default: the experiment's.", lower_bound=1)
flags.DEFINE_boolean("jit_compile", None, "XLA-compile the train step; default: the "
                     "experiment's.")
flags.DEFINE_enum("mixed_precision", None, ("float32", "mixed_float16", "mixed_bfloat16"),
                  "Keras mixed-precision policy; default: the experiment's.")
flags.DEFINE_string("hparams_file", None, "JSON of hyperparameters (a sweep's "
                    "best_hparams.json); --hparams still win over it.")
flags.DEFINE_enum("tuner", "hyperband", ("hyperband", "random", "bayesian"),
                  "Keras Tuner algorithm for --mode=tune.")
flags.DEFINE_integer("max_trials", 10, "Trials of a random or bayesian sweep.", lower_bound=1)
flags.DEFINE_integer("max_epochs", None, "Hyperband's max_epochs; for random and "
                     "bayesian sweeps, each trial's epochs.", lower_bound=1)
flags.DEFINE_integer("hyperband_factor", 3, "Hyperband's reduction factor.", lower_bound=2)
flags.DEFINE_string("sweep_name", None, "Sweep folder name; an unfinished sweep of that "
                    "name is resumed. Default: a new sweep-<timestamp> folder.")
flags.DEFINE_integer("verbose", 1, "Keras progress: 1 bar, 2 a line per epoch, 0 none.")
flags.mark_flag_as_required("experiment")
FLAGS = flags.FLAGS


def main(argv):
    if len(argv) > 1:
        print(f"launch.py: error: unexpected arguments {argv[1:]}", file=sys.stderr)
        return 1
    logging.set_verbosity(logging.INFO)
    from common import training  # TensorFlow loads here, after flag checks.
    import tensorflow as tf
    tf.get_logger().setLevel("WARNING")  # keep TF's per-op INFO chatter out
    options = training.RunOptions(
        experiment=FLAGS.experiment, strategy=FLAGS.strategy, tpu=FLAGS.tpu,
        device=FLAGS.device, num_cpu_devices=FLAGS.num_cpu_devices, mode=FLAGS.mode,
        epochs=FLAGS.epochs, batch_size=FLAGS.batch_size, hparams=tuple(FLAGS.hparams),
        dataset=FLAGS.dataset, weights=FLAGS.weights,
        init_from=FLAGS.init_from, data_dir=FLAGS.data_dir, results_dir=FLAGS.results_dir,
        run_name=FLAGS.run_name, seed=FLAGS.seed, verbose=FLAGS.verbose,
        hparams_file=FLAGS.hparams_file, tuner=FLAGS.tuner, max_trials=FLAGS.max_trials,
        max_epochs=FLAGS.max_epochs, hyperband_factor=FLAGS.hyperband_factor,
        sweep_name=FLAGS.sweep_name, steps_per_execution=FLAGS.steps_per_execution,
        jit_compile=FLAGS.jit_compile, mixed_precision=FLAGS.mixed_precision)
    try:
        training.run(options)
    except UserError as e:
        print(f"launch.py: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("launch.py: interrupted; the same command with the run's --run_name "
              "resumes it", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    app.run(main)
