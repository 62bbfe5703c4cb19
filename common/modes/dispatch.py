"""What launch.py runs: one mode of one experiment."""

import importlib
from typing import Any

import tensorflow as tf

import experiments
from common.config import choices
from common.config.options import RunOptions
from common.config.resolve import resolve_config
from common.data import prepared
from common.distribute import clusters, slurm, strategy as strategy_lib, sweep_cluster
from common.errors import UserError
from common.runs import files, saved
from common.training import precision


def run(options: RunOptions) -> dict[str, Any]:
    """Runs `options.mode` of `options.experiment`.

    Checks the names, the hyperparameters and the cluster before TensorFlow
    does any work, creates the strategy first (TensorFlow requires it), then
    calls common.modes.<mode>.run(experiment, options, config, strategy).

    Args:
        options: the command's flags.

    Returns:
        What the mode wrote: metrics.json (train), eval.json (eval),
        best_hparams.json (tune), the new metrics.json (export), the
        predictions (predict).

    Raises:
        UserError: anything a user can fix, always before a folder is
            written where it can be known then.
        RunFailed: a run that diverged (recorded as failed).
        tf.errors.DataLossError: damaged input that is not a prepared copy
            (a damaged prepared copy is deleted and raises UserError).
    """
    if options.mode not in choices.MODES:
        raise UserError(f"unknown --mode={options.mode!r}; choose one of: "
                        f"{', '.join(choices.MODES)}")
    options = slurm.slurm_run_defaults(options)  # inside Slurm: slurm-<job id>
    if options.run_name is not None:
        files.check_name("run_name", options.run_name)
    if options.sweep_name is not None:
        files.check_name("sweep_name", options.sweep_name)
    if options.mode in ("eval", "export", "predict") and not options.run_name:
        raise UserError(f"--mode={options.mode} needs --run_name of a finished run")
    saved.allow_unsafe_deserialization(options.unsafe_deserialization)
    experiment = experiments.get(options.experiment)
    config = resolve_config(experiment, options)
    clusters.check_cluster_options(options)
    role = sweep_cluster.sweep_role(options.mode, options.strategy)
    if role is not None:  # a distributed sweep: Keras Tuner's variables set
        sweep_cluster.activate(role)
        sweep_cluster.assign_gpus(role)
    # The strategy comes before any other TensorFlow op.
    strategy_lib.configure_cpu_devices(options.num_cpu_devices)
    strategy = strategy_lib.get_strategy(options.strategy, tpu=options.tpu,
                                         device=options.device,
                                         cluster_timeout=options.cluster_timeout)
    precision.check_hardware(config)
    strategy_lib.check_global_batch(config["batch_size"], strategy)
    # By name, so a mode's libraries (Keras Tuner, ...) load only when used.
    mode = importlib.import_module(f"common.modes.{options.mode}")
    try:
        return mode.run(experiment, options, config, strategy)
    except tf.errors.DataLossError as e:  # a prepared copy damaged in place
        explained = prepared.explain_data_loss(e)
        if explained is None:
            raise
        raise explained from None
