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
    Logical devices can only be configured before TensorFlow initialises
    its runtime; afterwards a call is fine only if the split is already
    there.

    Args:
        count: how many logical CPU devices (--num_cpu_devices); 0 or less
            leaves the CPU as it is.

    Raises:
        UserError: TensorFlow already runs with another number of CPU
            devices.
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
    """Builds strategy `name`.

    "default" is tf.distribute.get_strategy() (no distribution);
    "one_device" places everything on `device`; "mirrored" spans every
    logical GPU, or else every logical CPU with reduction through one
    device (NCCL all-reduce is GPU-only); "multi_worker_mirrored" is
    clusters.multi_worker_strategy; "tpu" connects to `tpu` and initialises
    the TPU system.

    Args:
        name: one of common.config.choices.STRATEGIES (--strategy).
        tpu: the TPU's address for "tpu" (--tpu); empty means this TPU VM
            ("local", as in TensorFlow's TPUClusterResolver docs).
        device: for "one_device": "cpu", "gpu" or "gpu:N" (--device; "cpu"
            and "gpu" mean index 0).
        cluster_timeout: for "multi_worker_mirrored", seconds to wait for
            the other workers.

    Returns:
        The tf.distribute.Strategy.

    Raises:
        UserError: an unknown name (the message lists the valid ones); a
            bad --device, or one this machine lacks; no TPU at --tpu; a
            cluster that cannot start (clusters.multi_worker_strategy).
    """
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
    """The per-replica batch of a global batch, which must divide evenly.

    Args:
        batch_size: the global batch, examples per step over all replicas.
        strategy: the run's strategy (its num_replicas_in_sync).

    Returns:
        batch_size // num_replicas_in_sync.

    Raises:
        UserError: a batch size of 0 or less, or one that is not a multiple
            of the replicas.
    """
    replicas = strategy.num_replicas_in_sync
    if batch_size <= 0 or batch_size % replicas:
        raise UserError(f"global batch size {batch_size} does not divide across "
                        f"{replicas} replicas; use a multiple of {replicas}")
    return batch_size // replicas


def strategy_name(strategy: tf.distribute.Strategy) -> str:
    """A readable name for logs and metrics ("MirroredStrategy").

    Args:
        strategy: any tf.distribute strategy.

    Returns:
        Its class name, but "DefaultStrategy" for TensorFlow's default
        strategy and "MultiWorkerMirroredStrategy" for its implementation
        class, CollectiveAllReduceStrategy.
    """
    names = {"_DefaultDistributionStrategy": "DefaultStrategy",
             # MultiWorkerMirroredStrategy's implementation class.
             "CollectiveAllReduceStrategy": "MultiWorkerMirroredStrategy"}
    name = type(strategy).__name__
    return names.get(name, name)


def task_id(strategy: tf.distribute.Strategy) -> int:
    """This worker's index in a cluster (0 outside one).

    Args:
        strategy: the run's strategy.

    Returns:
        The cluster resolver's task_id; 0 where the strategy has no
        resolver or the resolver has no task type.
    """
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or resolver.task_type is None:
        return 0
    return int(resolver.task_id)


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes the run's results.

    Always outside a cluster; in one, the task of type "chief", or worker 0
    where the cluster names no chief (TensorFlow's convention, as in
    tensorflow/python/distribute/multi_worker_util.py's is_chief).

    Args:
        strategy: the run's strategy.

    Returns:
        True for any strategy but MultiWorkerMirroredStrategy, one without a
        cluster resolver, or a task with no type or of type "chief"; else
        True only for worker 0 of a cluster without a chief.
    """
    resolver = getattr(strategy, "cluster_resolver", None)
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) or resolver is None:
        return True
    task_type = resolver.task_type
    if task_type in (None, "chief"):
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return task_type == "worker" and int(resolver.task_id) == 0 and not has_chief


def weights_checksum(model) -> str:
    """SHA-256 of the model's weights (first 16 hex digits).

    Equal on every worker of an all-reduce run, which is what synchronous
    data-parallel training promises.

    Args:
        model: a built Keras model; all its weights (model.weights,
            trainable or not) are hashed in order, as their raw bytes.

    Returns:
        The first 16 hexadecimal digits of the digest, a str.
    """
    digest = hashlib.sha256()
    for weight in model.weights:
        digest.update(np.ascontiguousarray(weight.numpy()).tobytes())
    return digest.hexdigest()[:16]
