"""One factory for every tf.distribute strategy the project runs under.

Call `configure_cpu_devices()` (if at all) and then `get_strategy()` before
any other TensorFlow op: logical devices and multi-worker collectives can only
be set up before TensorFlow initialises its runtime.
"""

import hashlib
import json
import os
import signal
import socket
import time

from absl import logging
import numpy as np
import tensorflow as tf

from common.choices import STRATEGIES
from common.errors import UserError

CLUSTER_JOBS = ("chief", "worker")


def configure_cpu_devices(count: int) -> None:
    """Splits the first CPU into `count` logical devices (0: leave as is).

    MirroredStrategy then runs `count` real replicas on a machine without
    accelerators: how distribution is tried on a laptop and tested in CI.
    """
    if count <= 0:
        return
    cpus = tf.config.list_physical_devices("CPU")
    try:
        tf.config.set_logical_device_configuration(
            cpus[0], [tf.config.LogicalDeviceConfiguration()] * count)
    except RuntimeError:
        # TensorFlow is already initialised; fine if it already has the split.
        existing = len(tf.config.list_logical_devices("CPU"))
        if existing != count:
            raise UserError(
                f"--num_cpu_devices={count} must be set before TensorFlow "
                f"starts (it already runs with {existing} CPU devices)") from None


def _one_line(error: BaseException) -> str:
    """The first sentence of an error: TensorFlow's run to many lines."""
    lines = str(error).strip().splitlines()
    if not lines:
        return type(error).__name__
    first, _, rest = lines[0].partition(". ")
    return first if rest else lines[0]


def _tpu_strategy(tpu: str) -> tf.distribute.Strategy:
    address = tpu or "local"  # empty means "this TPU VM", as in the TF docs.
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=address)
        if address != "local":
            tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except (ValueError, tf.errors.OpError, OSError, RuntimeError) as e:
        raise UserError(f"no TPU found at --tpu={address!r}: {_one_line(e)}") from None
    return tf.distribute.TPUStrategy(resolver)


def _one_device_strategy(device: str) -> tf.distribute.Strategy:
    kind, _, index = device.lower().partition(":")
    if kind not in ("cpu", "gpu"):
        raise UserError(f"unknown --device={device!r}; use cpu, gpu or gpu:N")
    index = index or "0"
    if not index.isdigit():
        raise UserError(f"bad --device={device!r}; use cpu, gpu or gpu:N")
    available = tf.config.list_physical_devices(kind.upper())
    if int(index) >= len(available):
        raise UserError(f"--device={device} requested but this machine has "
                        f"{len(available)} {kind.upper()} device(s)")
    return tf.distribute.OneDeviceStrategy(f"/{kind}:{index}")


def _mirrored_strategy() -> tf.distribute.Strategy:
    gpus = tf.config.list_logical_devices("GPU")
    if gpus:
        return tf.distribute.MirroredStrategy([d.name for d in gpus])
    cpus = [d.name for d in tf.config.list_logical_devices("CPU")]
    # NCCL all-reduce is GPU-only; on CPUs reduce through one device.
    return tf.distribute.MirroredStrategy(
        cpus, cross_device_ops=tf.distribute.ReductionToOneDevice())


def parse_tf_config(raw: str) -> dict:
    """TF_CONFIG, checked: a cluster of "host:port" lists (chief, worker),
    and this process's task in it. Raises UserError naming what is wrong."""
    form = ('{"cluster": {"worker": ["host:port", ...]}, '
            '"task": {"type": "worker", "index": 0}}')
    try:
        config = json.loads(raw)
    except ValueError as e:
        raise UserError(f"TF_CONFIG is not JSON ({e}); expected {form}") from None
    if not isinstance(config, dict) or not isinstance(config.get("cluster"), dict) \
            or not config["cluster"]:
        raise UserError(f"TF_CONFIG has no cluster; expected {form}")
    cluster = config["cluster"]
    for job, addresses in cluster.items():
        if job not in CLUSTER_JOBS:
            raise UserError(f"TF_CONFIG's cluster has a {job!r} job; "
                            f"MultiWorkerMirroredStrategy takes {' and '.join(CLUSTER_JOBS)}")
        if not isinstance(addresses, list) or not all(
                isinstance(a, str) and a.rpartition(":")[2].isdigit() for a in addresses):
            raise UserError(f"TF_CONFIG's cluster.{job} must be a list of \"host:port\" "
                            f"strings, got {addresses!r}")
    if len(cluster.get("chief", [])) > 1:
        raise UserError("TF_CONFIG's cluster names more than one chief")
    task = config.get("task")
    if not isinstance(task, dict):
        raise UserError(f"TF_CONFIG has no task for this process; expected {form}")
    kind, index = task.get("type"), task.get("index", 0)
    if kind == "evaluator":
        raise UserError("TF_CONFIG's task is an evaluator, which this project does not run "
                        "(every worker evaluates); give this process a worker task")
    if kind not in cluster:
        raise UserError(f"TF_CONFIG's task type {kind!r} is not a job of its cluster "
                        f"({', '.join(cluster)})")
    if not isinstance(index, int) or not 0 <= index < len(cluster[kind]):
        raise UserError(f"TF_CONFIG's task index {index!r} is outside cluster.{kind}, which "
                        f"has {len(cluster[kind])} address(es) (index 0 to "
                        f"{len(cluster[kind]) - 1})")
    return config


def _multi_worker_strategy(cluster_timeout: float) -> tf.distribute.Strategy:
    raw = os.environ.get("TF_CONFIG")
    if raw:
        config = parse_tf_config(raw)
        # TensorFlow's constructor waits for every peer, silently and deaf to
        # SIGTERM: wait here first, where a timeout can say who is missing.
        _wait_for_peers(config, cluster_timeout)
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    # TensorFlow catches SIGTERM for its preemption handling; schedulers
    # send it to stop a job, so restore the default: stop at once (the same
    # command resumes from the last epoch's backup).
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    return strategy


def _wait_for_peers(config: dict, timeout: float) -> None:
    """Waits until every other task of the cluster accepts connections, or
    raises UserError naming those that did not within `timeout` seconds.
    Meanwhile this task's own port accepts connections (a listening socket,
    closed before TensorFlow takes the port), so the peers see it too."""
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
        raise UserError(f"this worker cannot listen on {own} (its TF_CONFIG address): "
                        f"{e.strerror}") from None
    try:
        deadline = time.monotonic() + timeout
        waiting, told = list(peers), False
        while True:
            waiting = [a for a in waiting if not _reachable(a)]
            if not waiting:
                return
            if time.monotonic() > deadline:
                raise UserError(f"workers at {', '.join(waiting)} did not answer within "
                                f"--cluster_timeout={timeout:g} s; start every worker of "
                                "the cluster (or check the addresses in TF_CONFIG)")
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


def get_strategy(name: str, *, tpu: str = "", device: str = "cpu",
                 cluster_timeout: float = 900.0) -> tf.distribute.Strategy:
    """Builds strategy `name`; raises UserError for a bad name or absent hardware."""
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "one_device":
        return _one_device_strategy(device)
    if name == "mirrored":
        return _mirrored_strategy()
    if name == "multi_worker_mirrored":
        return _multi_worker_strategy(cluster_timeout)
    if name == "tpu":
        return _tpu_strategy(tpu)
    raise UserError(f"unknown strategy {name!r}; choose one of: {', '.join(STRATEGIES)}")


def check_global_batch(batch_size: int, strategy: tf.distribute.Strategy) -> int:
    """Returns the per-replica batch; the global batch must divide evenly."""
    replicas = strategy.num_replicas_in_sync
    if batch_size <= 0 or batch_size % replicas:
        raise UserError(f"global batch size {batch_size} does not divide across "
                        f"{replicas} replicas; use a multiple of {replicas}")
    return batch_size // replicas


def strategy_name(strategy: tf.distribute.Strategy) -> str:
    """A readable name for logs and metrics ("MirroredStrategy")."""
    names = {"_DefaultDistributionStrategy": "DefaultStrategy",
             # MultiWorkerMirroredStrategy's implementation class.
             "CollectiveAllReduceStrategy": "MultiWorkerMirroredStrategy"}
    name = type(strategy).__name__
    return names.get(name, name)



def task_id(strategy: tf.distribute.Strategy) -> int:
    """This worker's index in a cluster (0 outside one)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or resolver.task_type is None:
        return 0
    return int(resolver.task_id)


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes the run's results: always outside a
    cluster; in one, the task of type "chief", or worker 0 where the cluster
    names no chief (TensorFlow's convention)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) or resolver is None:
        return True
    task_type = resolver.task_type
    if task_type in (None, "chief"):
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return task_type == "worker" and int(resolver.task_id) == 0 and not has_chief



def tf_config_workers() -> int:
    """How many chief and worker tasks TF_CONFIG describes (1 without it);
    UserError for a TF_CONFIG that is set but wrong."""
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        return 1
    cluster = parse_tf_config(raw)["cluster"]
    return max(1, sum(len(cluster.get(job, [])) for job in CLUSTER_JOBS))


def num_workers(strategy: tf.distribute.Strategy) -> int:
    """Worker processes taking part in `strategy` (1 outside a cluster)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) or resolver is None:
        return 1
    spec = resolver.cluster_spec().as_dict()
    return max(1, sum(len(spec.get(job, [])) for job in CLUSTER_JOBS))


def check_cluster_options(options) -> None:
    """Before any work: several workers need a shared --run_name (or
    --sweep_name), and TF_CONFIG must be right."""
    if options.strategy != "multi_worker_mirrored" or tf_config_workers() <= 1:
        return
    if options.mode == "train" and not options.run_name:
        raise UserError("--strategy=multi_worker_mirrored with several workers needs "
                        "--run_name, the same on every worker (python -m "
                        "common.local_cluster picks one)")
    if options.mode == "tune" and not options.sweep_name:
        raise UserError("a sweep across several workers needs --sweep_name, the same "
                        "on every worker")


def weights_checksum(model) -> str:
    """SHA-256 of the model's weights (first 16 hex digits): equal on every
    worker of an all-reduce run, which is what synchronous data-parallel
    training promises."""
    digest = hashlib.sha256()
    for weight in model.weights:
        digest.update(np.ascontiguousarray(weight.numpy()).tobytes())
    return digest.hexdigest()[:16]
