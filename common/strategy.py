"""One factory for every tf.distribute strategy the project runs under.

Call `configure_cpu_devices()` (if at all) and then `get_strategy()` before
any other TensorFlow op: logical devices and multi-worker collectives can only
be set up before TensorFlow initialises its runtime.

MultiWorkerMirroredStrategy takes its cluster from TF_CONFIG, or, inside a
Slurm job step (srun) without TF_CONFIG, from Slurm: `slurm_tf_config()`
turns the step into the same TF_CONFIG form, so both paths then share the
checks, the wait for peers and the rest of the run.
"""

import dataclasses
import hashlib
import json
import os
import signal
import socket
import time
import zlib
from typing import Optional

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
    config, source = None, "TF_CONFIG"
    raw = os.environ.get("TF_CONFIG")
    if raw:  # TF_CONFIG wins, inside Slurm too (a user who wrote it meant it)
        config = parse_tf_config(raw)
    elif in_slurm_step():
        config, source = _slurm_cluster(), "Slurm"
        # From here on the Slurm step is this process's TF_CONFIG: what
        # follows (TensorFlow's resolver, is_chief, num_workers) is the
        # TF_CONFIG path, the one tested with local workers.
        os.environ["TF_CONFIG"] = json.dumps(config)
    else:
        _check_slurm_step()
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
        hint = (f"; set {SLURM_PORT_BASE_ENV} to move the step's ports"
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
                        f"reach each other on these ports ({SLURM_PORT_BASE_ENV} moves them)"
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


# Slurm --------------------------------------------------------------------

SLURM_PORT_BASE_ENV = "TF_SLURM_PORT_BASE"
# A step's workers take consecutive ports (one per task on a node) from a
# block picked by the job and step ids, so that two steps sharing a node
# rarely meet; below Linux's ephemeral ports (32768 and up), which outgoing
# connections (srun's own among them) take at random.
_SLURM_PORTS, _SLURM_PORT_BLOCK = (20000, 32768), 64


@dataclasses.dataclass(frozen=True)
class SlurmTask:
    """This task of a Slurm job step, as MultiWorkerMirroredStrategy needs it."""
    config: dict            # the step in TF_CONFIG form, with this task's entry
    gpus: tuple[int, ...]   # which of this task's visible GPUs it uses (none: CPU)


def slurm_job_id() -> Optional[str]:
    """The id of the Slurm job this process runs in (SLURM_JOB_ID), or None
    outside Slurm."""
    return os.environ.get("SLURM_JOB_ID") or None


def in_slurm_step() -> bool:
    """Whether this process is a task of a Slurm job step (started by srun).
    A batch script or an salloc shell is inside a job but in no step."""
    env = os.environ
    return bool(slurm_job_id()) and ("SLURM_STEP_ID" in env or "SLURM_STEPID" in env) \
        and "SLURM_PROCID" in env and "SLURM_STEP_NUM_TASKS" in env


def _check_slurm_step() -> None:
    """Inside a Slurm job without TF_CONFIG, multi-worker training needs the
    workers started by srun: a batch script or salloc shell alone is one."""
    if slurm_job_id() and not os.environ.get("TF_CONFIG") and not in_slurm_step():
        raise UserError(f"--strategy=multi_worker_mirrored inside Slurm job {slurm_job_id()} "
                        "but not in a job step: start the workers with srun, e.g. "
                        "srun python launch.py ...")


def _slurm_int(name: str) -> int:
    raw = os.environ.get(name)
    if raw is None:
        raise UserError(f"inconsistent Slurm step: {name} is not set (start the workers "
                        "with srun)")
    if not raw.strip().isdigit():
        raise UserError(f"inconsistent Slurm step: {name}={raw!r} is not a number")
    return int(raw)


def _slurm_port_base(job: str, step: str) -> int:
    raw = os.environ.get(SLURM_PORT_BASE_ENV)
    if raw:
        if not raw.isdigit() or not 1024 <= int(raw) <= 65000:
            raise UserError(f"{SLURM_PORT_BASE_ENV}={raw!r} is not a port number "
                            "from 1024 to 65000")
        return int(raw)
    blocks = (_SLURM_PORTS[1] - _SLURM_PORTS[0]) // _SLURM_PORT_BLOCK - 1
    return _SLURM_PORTS[0] + zlib.crc32(f"{job}.{step}".encode()) % blocks * _SLURM_PORT_BLOCK


def _slurm_step_layout() -> str:
    env = os.environ
    return ", ".join(f"{name}={env.get(name)!r}" for name in (
        "SLURM_STEP_NUM_TASKS", "SLURM_STEP_NODELIST", "SLURM_STEP_TASKS_PER_NODE"))


def _slurm_workers(port_base: int, gpus_per_node: int, gpus_per_task: int) -> list[str]:
    """The step's tasks as "node:port", from TensorFlow's SlurmClusterResolver
    (nodes sorted by name, then each node's tasks on consecutive ports)."""
    resolver = tf.distribute.cluster_resolver.SlurmClusterResolver(
        port_base=port_base, gpus_per_node=gpus_per_node, gpus_per_task=gpus_per_task,
        # The resolver would set CUDA_VISIBLE_DEVICES, which TensorFlow has
        # read already (launch.py lists the devices while it loads): the
        # GPUs are chosen with tf.config.set_visible_devices instead.
        auto_set_gpu=False)
    return list(resolver.cluster_spec().as_dict().get("worker", []))


def _slurm_gpu_share(visible: int, local_tasks: int, local_id: int,
                     node: str) -> tuple[int, int, tuple[int, ...]]:
    """(GPUs on this node, GPUs per task, which of the visible ones this
    task uses). Where Slurm binds GPUs to tasks (--gpus-per-task,
    --gpu-bind), a task sees fewer GPUs than the node holds and uses all it
    sees; otherwise the tasks of a node split its GPUs by local task id."""
    on_node = os.environ.get("SLURM_GPUS_ON_NODE", "")
    if on_node.isdigit() and int(on_node) > visible:
        return int(on_node), visible, tuple(range(visible))
    per_task = visible // local_tasks
    if per_task == 0:
        raise UserError(f"{local_tasks} tasks on node {node} share {visible} GPU(s); give "
                        "each task at least one (srun --gpus-per-task=1, or fewer tasks "
                        "per node)")
    if visible % local_tasks:
        logging.warning("%d GPUs on node %s do not divide among its %d tasks: each uses "
                        "%d, %d stay idle", visible, node, local_tasks, per_task,
                        visible % local_tasks)
    first = local_id * per_task
    return visible, per_task, tuple(range(first, first + per_task))


def slurm_tf_config(visible_gpus: int = 0) -> SlurmTask:
    """This task of the current Slurm job step (srun), read from Slurm's
    variables by TensorFlow's SlurmClusterResolver: every task of the step is
    a worker on "<node>:<port>" (nodes sorted by name, each node's tasks on
    consecutive ports), this task is the one on its node and local task id,
    and worker 0 is the chief: Slurm's task 0, unless node names sort in
    another order than Slurm's node list. `visible_gpus` is how many GPUs
    this task sees; with none (a CPU-only node) the resolver's GPU
    bookkeeping, which divides by the GPUs per task, gets one per task.
    Raises UserError naming what is wrong: a step of one task, counts that
    disagree, GPUs that cannot be shared among the node's tasks."""
    env = os.environ
    job = slurm_job_id()
    step = env.get("SLURM_STEP_ID", env.get("SLURM_STEPID", ""))
    tasks = _slurm_int("SLURM_STEP_NUM_TASKS")
    if "SLURM_NTASKS" in env and _slurm_int("SLURM_NTASKS") != tasks:
        raise UserError(f"inconsistent Slurm step: SLURM_NTASKS={env['SLURM_NTASKS']} but "
                        f"SLURM_STEP_NUM_TASKS={tasks}")
    if tasks < 2:
        raise UserError(f"Slurm step {job}.{step} runs {tasks} task; "
                        "--strategy=multi_worker_mirrored needs 2 or more (srun -n 2, or "
                        "--ntasks-per-node=N on several nodes); one process on one node "
                        "takes --strategy=mirrored")
    rank, local = _slurm_int("SLURM_PROCID"), _slurm_int("SLURM_LOCALID")
    if rank >= tasks:
        raise UserError(f"inconsistent Slurm step: SLURM_PROCID={rank} is outside its "
                        f"{tasks} tasks (0 to {tasks - 1})")
    node = env.get("SLURMD_NODENAME") or env.get("SLURM_TOPOLOGY_ADDR")
    if not node:
        raise UserError("inconsistent Slurm step: SLURMD_NODENAME, this task's node, "
                        "is not set")
    port_base = _slurm_port_base(job, step)
    try:
        workers = _slurm_workers(port_base, gpus_per_node=tasks, gpus_per_task=1)
    except (RuntimeError, ValueError, AssertionError, KeyError) as e:
        raise UserError(f"inconsistent Slurm step: {_slurm_step_layout()} "
                        f"({_one_line(e)})") from None
    own = f"{node}:{port_base + local}"
    if own not in workers:
        raise UserError(f"inconsistent Slurm step: this task (node {node}, local task "
                        f"{local}) is not among the tasks that {_slurm_step_layout()} "
                        "describe")
    local_tasks = sum(1 for address in workers if address.rpartition(":")[0] == node)
    gpus: tuple[int, ...] = ()
    if visible_gpus:
        per_node, per_task, gpus = _slurm_gpu_share(visible_gpus, local_tasks, local, node)
        try:  # the resolver's own check of the real counts, over every node
            _slurm_workers(port_base, gpus_per_node=per_node, gpus_per_task=per_task)
        except RuntimeError as e:
            raise UserError(f"the step's GPUs do not divide evenly: {per_task} GPU(s) per "
                            f"task and {per_node} on node {node}, but some node runs more "
                            f"tasks ({_one_line(e)}); give every node the same "
                            "--ntasks-per-node") from None
    config = {"cluster": {"worker": workers},
              "task": {"type": "worker", "index": workers.index(own)}}
    logging.info("Slurm job %s step %s: task %d of %d is worker %d%s at %s%s", job, step,
                 rank, tasks, workers.index(own),
                 " (the chief)" if workers.index(own) == 0 else "", own,
                 f", GPUs {list(gpus)} of the {visible_gpus} it sees" if gpus else "")
    return SlurmTask(parse_tf_config(json.dumps(config)), gpus)


def _slurm_cluster() -> dict:
    """The Slurm step as TF_CONFIG; on GPU nodes, this task's GPUs made the
    only ones TensorFlow uses."""
    gpus = tf.config.list_physical_devices("GPU")
    task = slurm_tf_config(len(gpus))
    if task.gpus and len(task.gpus) < len(gpus):
        try:
            tf.config.set_visible_devices([gpus[i] for i in task.gpus], "GPU")
        except RuntimeError:
            raise UserError("cannot assign this Slurm task its GPUs: TensorFlow already "
                            "started (create the strategy before any other TensorFlow op)"
                            ) from None
    return task.config


def slurm_run_defaults(options):
    """Inside a Slurm job, names what the command leaves unnamed after the
    job: --run_name (--mode=train) or --sweep_name (--mode=tune) becomes
    `slurm-<job id>`, the same on every task, so that a requeued job (it
    keeps its id) or the same srun run again in the job resumes its run.
    Returns `options`, or a copy with the name set. Raises UserError where
    several tasks of a step would each train on their own (a strategy other
    than multi_worker_mirrored), or where multi_worker_mirrored is asked for
    in the job but outside a step (no srun)."""
    job = slurm_job_id()
    if job is None:
        return options
    if options.strategy == "multi_worker_mirrored":
        _check_slurm_step()
    tasks = _slurm_int("SLURM_STEP_NUM_TASKS") if in_slurm_step() else 1
    if tasks > 1 and options.strategy != "multi_worker_mirrored":
        raise UserError(f"this Slurm step runs {tasks} tasks, but --strategy="
                        f"{options.strategy} trains in one process, so each task would run "
                        "alone; use --strategy=multi_worker_mirrored (or srun -n 1)")
    name = f"slurm-{job}"
    if options.mode == "train" and not options.run_name:
        logging.info("Slurm job %s: --run_name=%s (a requeued job, or this command run "
                     "again in the job, resumes it)", job, name)
        return dataclasses.replace(options, run_name=name)
    if options.mode == "tune" and not options.sweep_name:
        logging.info("Slurm job %s: --sweep_name=%s", job, name)
        return dataclasses.replace(options, sweep_name=name)
    return options


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


def expected_workers() -> int:
    """How many workers --strategy=multi_worker_mirrored joins: TF_CONFIG's
    chief and worker tasks where it is set, else the tasks of the Slurm job
    step this process is in, else 1. UserError for a TF_CONFIG that is set
    but wrong."""
    if os.environ.get("TF_CONFIG"):
        return tf_config_workers()
    if in_slurm_step():
        return max(1, _slurm_int("SLURM_STEP_NUM_TASKS"))
    return 1


def num_workers(strategy: tf.distribute.Strategy) -> int:
    """Worker processes taking part in `strategy` (1 outside a cluster)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) or resolver is None:
        return 1
    spec = resolver.cluster_spec().as_dict()
    return max(1, sum(len(spec.get(job, [])) for job in CLUSTER_JOBS))


def check_cluster_options(options) -> None:
    """Before any work: several workers need a shared --run_name (or
    --sweep_name), and TF_CONFIG must be right. Inside Slurm,
    `slurm_run_defaults` has named them already."""
    if options.strategy != "multi_worker_mirrored" or expected_workers() <= 1:
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
