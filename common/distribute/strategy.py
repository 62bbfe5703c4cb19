"""One factory for every tf.distribute strategy the project runs under.

Call `configure_cpu_devices()` (if at all) and then `get_strategy()` before
any other TensorFlow op: logical devices and multi-worker collectives can only
be set up before TensorFlow initialises its runtime. Clusters (TF_CONFIG,
Slurm) are distribute/clusters.py's.
"""

import hashlib

import numpy as np
import tensorflow as tf

from common.config.choices import STRATEGIES
from common.distribute import clusters
from common.errors import UserError, one_line

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


def _tpu_strategy(tpu: str) -> tf.distribute.Strategy:
    address = tpu or "local"  # empty means "this TPU VM", as in the TF docs.
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=address)
        if address != "local":
            tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except (ValueError, tf.errors.OpError, OSError, RuntimeError) as e:
        raise UserError(f"no TPU found at --tpu={address!r}: {one_line(e)}") from None
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
        return clusters.multi_worker_strategy(cluster_timeout)
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


def weights_checksum(model) -> str:
    """SHA-256 of the model's weights (first 16 hex digits): equal on every
    worker of an all-reduce run, which is what synchronous data-parallel
    training promises."""
    digest = hashlib.sha256()
    for weight in model.weights:
        digest.update(np.ascontiguousarray(weight.numpy()).tobytes())
    return digest.hexdigest()[:16]
