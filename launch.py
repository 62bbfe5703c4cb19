"""Runs any experiment by name.

    python launch.py --experiment=mnist_lenet
    python launch.py --experiment=mnist_lenet --dataset=fashion_mnist --epochs=5
    python launch.py --experiment=mnist_lenet --strategy=mirrored --num_cpu_devices=2

The logic lives in common/ (common/modes/dispatch.py runs a mode), importable
and tested; this file only turns flags into RunOptions and whatever goes
wrong into one line on stderr (a genuine bug's traceback goes to a log file
the line names).
"""

import dataclasses
import functools
import importlib.util
import logging as std_logging
import os
import signal
import sys


def _interrupted(signum, frame):
    # One line and exit 130 at any moment, TensorFlow's import included.
    # Nothing is lost: backups and results are written atomically, and the
    # run's lock is released by the operating system.
    common_module = sys.modules.get("common")
    fd = getattr(common_module, "user_stderr_fd", 2)
    os.write(fd, b"\nlaunch.py: interrupted; the same command (with the run's --run_name) "
                 b"resumes it\n")
    os._exit(130)


signal.signal(signal.SIGINT, _interrupted)

import common  # noqa: E402  (selects tf_keras before TensorFlow is imported)
from absl import app, flags, logging  # noqa: E402

import experiments  # noqa: E402
from common.config import choices  # noqa: E402
from common.config.options import RunOptions  # noqa: E402
from common.data import memory  # noqa: E402
from common.errors import UserError, system_reason  # noqa: E402
from common.runs import crash  # noqa: E402

flags.DEFINE_enum("experiment", None, experiments.names(), "Experiment (folder under experiments/).")
flags.DEFINE_enum("strategy", "default", choices.STRATEGIES, "tf.distribute strategy.")
flags.DEFINE_string("tpu", "", "TPU name or grpc:// address; empty or 'local' on a TPU VM.")
flags.DEFINE_string("device", "cpu", "Device for --strategy=one_device: cpu, gpu or gpu:N.")
flags.DEFINE_integer("num_cpu_devices", 0, "Split the CPU into N logical devices "
                     "(MirroredStrategy then runs N replicas without accelerators).",
                     lower_bound=0)
flags.DEFINE_float("cluster_timeout", 900, "Seconds a worker of a cluster waits for the "
                   "others before it stops with the addresses it could not reach.",
                   lower_bound=1)
flags.DEFINE_enum("mode", "train", choices.MODES, "train; eval (every model of --run_name "
                  "on the test split); tune (a Keras Tuner sweep); export (serving files of "
                  "--run_name); predict (--run_name's model on --inputs).")
flags.DEFINE_integer("epochs", None, "Override the experiment's epochs (multi-stage "
                     "experiments: every training stage).", lower_bound=1)
flags.DEFINE_integer("batch_size", None, "Global batch size (split across replicas).",
                     lower_bound=1)
flags.DEFINE_list("hparams", [], "Hyperparameter overrides: name=value,name=value.")
flags.DEFINE_string("dataset", None, "Override the experiment's dataset (a TFDS name, or "
                    "image_folder: class folders of images in --data_dir).")
flags.DEFINE_string("weights", None, "Pretrained weights, for experiments that take "
                    "them: imagenet, none, or the path of a local weights file.")
flags.DEFINE_string("init_from", None, "A finished run folder (results/<experiment>/<run>) "
                    "whose model an experiment starts from (pruning_qat).")
flags.DEFINE_string("data_dir", None, "TFDS data_dir, a folder of the original files, or "
                    "the image folder of --dataset=image_folder.")
flags.DEFINE_string("data_memory_budget", "auto", "Memory the data may be cached in: auto "
                    "(a quarter of what this process may use, cgroup limits included), a "
                    "size such as 512M or 2G, or 0 to stream every split from disk.")
flags.DEFINE_string("results_dir", "results", "Where run folders are created.")
flags.DEFINE_string("run_name", None, "Run folder name; an unfinished run of that "
                    "name is resumed. Default: a new timestamped folder.")
flags.DEFINE_boolean("restart", False, "Start the unfinished run --run_name over (its "
                     "history, logs and backups are deleted; a finished run never is).")
flags.DEFINE_integer("seed", 0, "Random seed.", lower_bound=0)
flags.DEFINE_integer("steps_per_execution", None, "Training steps per call into the "
                     "graph (Keras compile); default: the experiment's.", lower_bound=1)
flags.DEFINE_boolean("jit_compile", None, "XLA-compile the train step; default: the "
                     "experiment's.")
flags.DEFINE_enum("mixed_precision", None, choices.PRECISIONS,
                  "Keras mixed-precision policy; default: the experiment's.")
flags.DEFINE_boolean("deterministic", None, "Repeat exactly: TensorFlow's op determinism "
                     "and a deterministic input pipeline (slower).")
flags.DEFINE_string("hparams_file", None, "JSON of hyperparameters (a sweep's "
                    "best_hparams.json); --hparams still win over it.")
flags.DEFINE_enum("tuner", "hyperband", choices.TUNERS, "Keras Tuner algorithm for --mode=tune.")
flags.DEFINE_integer("max_trials", 10, "Trials of a random or bayesian sweep.", lower_bound=1)
flags.DEFINE_integer("max_epochs", None, "Hyperband's max_epochs; for random and "
                     "bayesian sweeps, each trial's epochs.", lower_bound=1)
flags.DEFINE_integer("hyperband_factor", 3, "Hyperband's reduction factor.", lower_bound=2)
flags.DEFINE_string("sweep_name", None, "Sweep folder name; an unfinished sweep of that "
                    "name is resumed. Default: a new sweep-<timestamp> folder.")
flags.DEFINE_string("inputs", None, "--mode=predict: an image file, a folder or a glob "
                    "(PNG, JPEG, BMP, GIF).")
flags.DEFINE_integer("top_k", 1, "--mode=predict: classes listed per image.", lower_bound=1)
flags.DEFINE_string("output", None, "--mode=predict: the CSV written (default: "
                    "predictions.csv in the run folder).")
flags.DEFINE_boolean("unsafe_deserialization", False, "Load models that hold Python code "
                     "(Lambda layers), which runs as they load: only from runs you trust "
                     "(docs/security.md).")
flags.DEFINE_integer("verbose", 1, "Keras progress: 1 bar, 2 a line per epoch, 0 none.",
                     lower_bound=0, upper_bound=2)
flags.mark_flag_as_required("experiment")
FLAGS = flags.FLAGS


def options_from_flags() -> RunOptions:
    names = [f.name for f in dataclasses.fields(RunOptions) if f.name in FLAGS]
    values = {name: FLAGS[name].value for name in names}
    values["hparams"] = tuple(values["hparams"])
    return RunOptions(**values)


def main(argv):
    if len(argv) > 1:
        print(f"launch.py: error: unexpected arguments {argv[1:]}", file=sys.stderr)
        return 1
    _quiet_logs()
    options = options_from_flags()
    try:
        if options.data_memory_budget not in ("", "auto"):
            memory.parse_size(options.data_memory_budget)  # before TensorFlow loads
        with common.quiet_native_startup():
            from common.modes import dispatch  # TensorFlow loads here, after flag checks.
        import tensorflow as tf
        tf.get_logger().setLevel("WARNING")  # keep TF's per-op INFO chatter out
        dispatch.run(options)
    except UserError as e:
        print(f"launch.py: error: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        where = f" {e.filename}" if e.filename else ""
        print(f"launch.py: error:{where}: {e.strerror or e}", file=sys.stderr)
        return 1
    except Exception as e:  # a bug: one line here, the traceback in a file
        reason = system_reason(e)
        if reason:  # TensorFlow's own file writers report a full or read-only disk so
            print(f"launch.py: error: {reason} (free space or fix the permission; then the "
                  "same command, with the run's --run_name, resumes a run)", file=sys.stderr)
            return 1
        log = crash.write_log(options.results_dir, options.experiment)
        print(f"launch.py: error: unexpected {type(e).__name__}: "
              f"{str(e).strip().splitlines()[0] if str(e).strip() else ''} "
              f"(traceback in {log}; please report it)", file=sys.stderr)
        return 2
    return 0


class _OwnInfo(std_logging.Filter):
    """Passes the project's INFO lines and everyone's warnings: TensorFlow's
    and Keras' own INFO lines (checkpoint sharding times, ...) are noise."""

    def filter(self, record):
        if "triggered tf.function retracing" in str(record.msg):
            return False  # each model the runner scores gets its own function
        return (record.levelno >= std_logging.WARNING
                or not record.pathname.startswith(_third_party_folders()))


@functools.lru_cache(maxsize=None)
def _third_party_folders() -> tuple:
    """Where TensorFlow, Keras, TFDS and Keras Tuner are installed (found
    without importing them): their INFO lines are the ones _OwnInfo drops."""
    folders = []
    for name in ("tensorflow", "tf_keras", "keras", "tensorflow_datasets", "keras_tuner"):
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            spec = None
        if spec is not None and spec.origin:
            folders.append(os.path.dirname(spec.origin) + os.sep)
    return tuple(folders)


class _Format(std_logging.Formatter):
    def format(self, record):
        text = super().format(record)
        if record.levelno >= std_logging.WARNING:
            stamp, _, message = text.partition(" ")
            text = f"{stamp} {record.levelname.lower()}: {message}"
        return text


def _quiet_logs() -> None:
    """The project's log lines as "12:00:01 message", TensorFlow's INFO lines off."""
    logging.set_verbosity(logging.INFO)
    handler = logging.get_absl_handler()
    handler.setFormatter(_Format("%(asctime)s %(message)s", "%H:%M:%S"))
    handler.addFilter(_OwnInfo())


def parse_flags(argv):
    """absl's parsing, with a mistake as one line (absl adds a second)."""
    try:
        return FLAGS(argv)
    except flags.Error as e:
        print(f"launch.py: error: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
