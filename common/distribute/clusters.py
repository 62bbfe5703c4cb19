"""Clusters of workers for MultiWorkerMirroredStrategy: TF_CONFIG checked,
peers waited for with a timeout, SIGTERM honoured; the cluster from TF_CONFIG
or, inside a Slurm job step without it, from Slurm (distribute/slurm.py).
"""

import json
import os
import signal
import socket
import time

from absl import logging
import tensorflow as tf

from common.distribute import slurm
from common.distribute.tf_config import CLUSTER_JOBS, parse_tf_config
from common.errors import UserError


def multi_worker_strategy(cluster_timeout: float) -> tf.distribute.Strategy:
    """Creates MultiWorkerMirroredStrategy once every peer answers.

    The cluster is TF_CONFIG where it is set (inside Slurm too); else,
    inside a Slurm job step, the step (distribute/slurm.py), which is then
    written into this process's TF_CONFIG; else TensorFlow's own default (a
    single worker). With a cluster from TF_CONFIG or Slurm, this worker
    first waits for every other task of it to accept connections. Afterwards
    SIGTERM's default action (stop at once) is restored, since TensorFlow
    catches it for its preemption handling.

    Args:
        cluster_timeout: seconds to wait for the other workers.

    Returns:
        A tf.distribute.MultiWorkerMirroredStrategy.

    Raises:
        UserError: a TF_CONFIG that is set but wrong (tf_config.parse_tf_config);
            inside a Slurm job, no job step or an inconsistent one
            (slurm.check_slurm_step, slurm.slurm_cluster); this worker's
            port taken, or workers that did not answer within
            `cluster_timeout` (the message names them).
    """
    config, source = None, "TF_CONFIG"
    raw = os.environ.get("TF_CONFIG")
    if raw:  # TF_CONFIG wins, inside Slurm too (a user who wrote it meant it)
        config = parse_tf_config(raw)
    elif slurm.in_slurm_step():
        config, source = slurm.slurm_cluster(), "Slurm"
        # From here on the Slurm step is this process's TF_CONFIG: what
        # follows (TensorFlow's resolver, is_chief, num_workers) is the
        # TF_CONFIG path, the one tested with local workers.
        os.environ["TF_CONFIG"] = json.dumps(config)
    else:
        slurm.check_slurm_step()
    if config:
        # TensorFlow's constructor waits for every peer, silently and deaf to
        # SIGTERM: wait here first, where a timeout can say who is missing.
        _wait_for_peers(config, cluster_timeout, source)
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    # TensorFlow catches SIGTERM for its preemption handling; schedulers
    # send it to stop a job, so restore the default: stop at once (the same
    # command resumes from the last epoch's backup).
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    return strategy


def _wait_for_peers(config: dict, timeout: float, source: str = "TF_CONFIG") -> None:
    """Waits until every other task of the cluster accepts connections, or
    raises UserError naming those that did not within `timeout` seconds.
    Meanwhile this task's own port accepts connections (a listening socket,
    closed before TensorFlow takes the port), so the peers see it too.
    `source` names where the addresses came from (TF_CONFIG or Slurm)."""
    kind, index = config["task"]["type"], config["task"].get("index", 0)
    own = config["cluster"][kind][index]
    peers = [address for job, addresses in config["cluster"].items()
             for i, address in enumerate(addresses) if (job, i) != (kind, index)]
    if not peers:
        return
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind(("", int(own.rpartition(":")[2])))
        listener.listen(16)
    except OSError as e:
        listener.close()
        hint = (f"; set {slurm.SLURM_PORT_BASE_ENV} to move the step's ports"
                if source == "Slurm" else "")
        raise UserError(f"this worker cannot listen on {own} (its {source} address): "
                        f"{e.strerror}{hint}") from None
    try:
        deadline = time.monotonic() + timeout
        waiting, told = list(peers), False
        while True:
            waiting = [a for a in waiting if not _reachable(a)]
            if not waiting:
                return
            if time.monotonic() > deadline:
                hint = ("check that every task of the step started and that the nodes "
                        f"reach each other on these ports ({slurm.SLURM_PORT_BASE_ENV} moves them)"
                        if source == "Slurm" else "start every worker of the cluster (or "
                        "check the addresses in TF_CONFIG)")
                raise UserError(f"workers at {', '.join(waiting)} did not answer within "
                                f"--cluster_timeout={timeout:g} s; {hint}")
            if not told:
                logging.info("Waiting for workers at %s (up to %g s)", ", ".join(waiting),
                             timeout)
                told = True
            time.sleep(0.5)
    finally:
        listener.close()


def _reachable(address: str) -> bool:
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=2):
            return True
    except OSError:
        return False


def tf_config_workers() -> int:
    """How many chief and worker tasks TF_CONFIG describes.

    Returns:
        The number of chief and worker addresses in TF_CONFIG's cluster (at
        least 1); 1 where TF_CONFIG is unset or empty.

    Raises:
        UserError: a TF_CONFIG that is set but wrong (tf_config.parse_tf_config).
    """
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        return 1
    cluster = parse_tf_config(raw)["cluster"]
    return max(1, sum(len(cluster.get(job, [])) for job in CLUSTER_JOBS))


def expected_workers() -> int:
    """How many workers --strategy=multi_worker_mirrored joins.

    Read before any strategy exists, from the environment only.

    Returns:
        TF_CONFIG's chief and worker tasks where it is set; else the tasks
        of the Slurm job step this process is in (SLURM_STEP_NUM_TASKS, at
        least 1); else 1.

    Raises:
        UserError: a TF_CONFIG that is set but wrong (tf_config.parse_tf_config),
            or a Slurm step whose SLURM_STEP_NUM_TASKS is not a number
            (slurm.slurm_int).
    """
    if os.environ.get("TF_CONFIG"):
        return tf_config_workers()
    if slurm.in_slurm_step():
        return max(1, slurm.slurm_int("SLURM_STEP_NUM_TASKS"))
    return 1


def num_workers(strategy: tf.distribute.Strategy) -> int:
    """Worker processes taking part in `strategy` (1 outside a cluster).

    Args:
        strategy: the run's strategy.

    Returns:
        The chief and worker tasks of a MultiWorkerMirroredStrategy's cluster
        spec (at least 1); 1 for any other strategy, or one without a
        cluster resolver.
    """
    resolver = getattr(strategy, "cluster_resolver", None)
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) or resolver is None:
        return 1
    spec = resolver.cluster_spec().as_dict()
    return max(1, sum(len(spec.get(job, [])) for job in CLUSTER_JOBS))


def worker_index(strategy: tf.distribute.Strategy) -> int:
    """This worker's place among the cluster's input pipelines: the chief 0
    and worker i i + 1 where the cluster has a chief, else worker i i (how
    tf.distribute numbers them); 0 outside a cluster.

    Args:
        strategy: the run's strategy.

    Returns:
        0..num_workers(strategy) - 1.
    """
    if num_workers(strategy) <= 1:
        return 0
    resolver = strategy.cluster_resolver
    spec = resolver.cluster_spec().as_dict()
    task_type, task_id = resolver.task_type, int(resolver.task_id or 0)
    if task_type == "chief":
        return 0
    return task_id + (1 if spec.get("chief") else 0)


def check_cluster_options(options) -> None:
    """Checks, before any work, what a cluster of several workers needs.

    Only with --strategy=multi_worker_mirrored and more than one expected
    worker (expected_workers): --mode=train needs --run_name and
    --mode=tune needs --sweep_name, the same on every worker. Inside Slurm,
    slurm.slurm_run_defaults has named them already.

    Args:
        options: the command's flags (common.config.options.RunOptions).

    Raises:
        UserError: several workers without --run_name (train) or
            --sweep_name (tune), or a TF_CONFIG that is set but wrong
            (expected_workers).
    """
    if options.strategy != "multi_worker_mirrored" or expected_workers() <= 1:
        return
    if options.mode == "train" and not options.run_name:
        raise UserError("--strategy=multi_worker_mirrored with several workers needs "
                        "--run_name, the same on every worker (python -m "
                        "common.distribute.local_cluster picks one)")
    if options.mode == "tune" and not options.sweep_name:
        raise UserError("a sweep across several workers needs --sweep_name, the same "
                        "on every worker")
