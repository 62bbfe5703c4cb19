"""MultiWorkerMirroredStrategy inside a Slurm job step (srun), without TF_CONFIG.

`slurm_tf_config()` turns the step into TF_CONFIG's form with TensorFlow's
SlurmClusterResolver (working around its crash on CPU-only nodes, and giving
GPU nodes' tasks their GPUs), so the TF_CONFIG path of distribute/clusters.py
runs from there on. `slurm_run_defaults()` names a run after its job, so a
requeued job resumes it.
"""

import dataclasses
import json
import os
import zlib
from typing import Optional

from absl import logging
import tensorflow as tf

from common.distribute.tf_config import parse_tf_config
from common.errors import UserError, one_line

SLURM_PORT_BASE_ENV = "TF_SLURM_PORT_BASE"


# A step's workers take consecutive ports (one per task on a node) from a
# block picked by the job and step ids, so that two steps sharing a node
# rarely meet; below Linux's ephemeral ports (32768 and up), which outgoing
# connections (srun's own among them) take at random.
_SLURM_PORTS, _SLURM_PORT_BLOCK = (20000, 32768), 64


@dataclasses.dataclass(frozen=True)
class SlurmTask:
    """This task of a Slurm job step, as MultiWorkerMirroredStrategy needs it.

    Attributes:
        config: the step in TF_CONFIG form, with this task's entry.
        gpus: which of this task's visible GPUs it uses, as indices into
            tf.config.list_physical_devices("GPU") (none: CPU).
    """
    config: dict
    gpus: tuple[int, ...]


def slurm_job_id() -> Optional[str]:
    """The id of the Slurm job this process runs in (SLURM_JOB_ID).

    Returns:
        SLURM_JOB_ID as a string; None outside Slurm (unset or empty).
    """
    return os.environ.get("SLURM_JOB_ID") or None


def in_slurm_step() -> bool:
    """Whether this process is a task of a Slurm job step (started by srun).

    A batch script or an salloc shell is inside a job but in no step.

    Returns:
        True where SLURM_JOB_ID is set and non-empty and SLURM_STEP_ID (or
        the older SLURM_STEPID), SLURM_PROCID and SLURM_STEP_NUM_TASKS are
        set.
    """
    env = os.environ
    return bool(slurm_job_id()) and ("SLURM_STEP_ID" in env or "SLURM_STEPID" in env) \
        and "SLURM_PROCID" in env and "SLURM_STEP_NUM_TASKS" in env


def check_slurm_step() -> None:
    """Checks that multi-worker training inside a Slurm job runs in a job step.

    Inside a Slurm job without TF_CONFIG, multi-worker training needs the
    workers started by srun: a batch script or salloc shell alone is one.
    Outside Slurm, or with TF_CONFIG set, there is nothing to check.

    Raises:
        UserError: inside a Slurm job, TF_CONFIG unset and no job step.
    """
    if slurm_job_id() and not os.environ.get("TF_CONFIG") and not in_slurm_step():
        raise UserError(f"--strategy=multi_worker_mirrored inside Slurm job {slurm_job_id()} "
                        "but not in a job step: start the workers with srun, e.g. "
                        "srun python launch.py ...")


def slurm_int(name: str) -> int:
    """One of Slurm's numeric environment variables.

    Args:
        name: the variable, e.g. "SLURM_STEP_NUM_TASKS".

    Returns:
        Its value as an int.

    Raises:
        UserError: the variable is unset, or not a non-negative whole number.
    """
    raw = os.environ.get(name)
    if raw is None:
        raise UserError(f"inconsistent Slurm step: {name} is not set (start the workers "
                        "with srun)")
    if not raw.strip().isdigit():
        raise UserError(f"inconsistent Slurm step: {name}={raw!r} is not a number")
    return int(raw)


def port_base(job: str, step: str) -> int:
    """The first port of a Slurm step's block: TF_SLURM_PORT_BASE where set,
    else one of the blocks of 64 from 20,000 to 32,767 picked by a CRC-32 of
    the job and step ids (two steps on one node rarely meet).

    Args:
        job: the job id.
        step: the step id.

    Returns:
        The port number.

    Raises:
        UserError: TF_SLURM_PORT_BASE is not a port from 1024 to 65000.
    """
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
    """This task of the current Slurm job step (srun), in TF_CONFIG's form.

    Read from Slurm's variables by TensorFlow's SlurmClusterResolver: every
    task of the step is a worker on "<node>:<port>" (nodes sorted by name,
    each node's tasks on consecutive ports from a base picked by the job and
    step ids, or TF_SLURM_PORT_BASE), this task is the one on its node
    (SLURMD_NODENAME, else SLURM_TOPOLOGY_ADDR) and local task id
    (SLURM_LOCALID), and worker 0 is the
    chief: Slurm's task 0, unless node names sort in another order than
    Slurm's node list. The step's layout is first resolved with one GPU per
    task, since the resolver's GPU bookkeeping divides by the GPUs per task
    (on a CPU-only node there are none); with visible GPUs, the real counts
    are checked by the resolver again.

    Args:
        visible_gpus: how many GPUs this task sees (0: a CPU-only node).

    Returns:
        A SlurmTask: the step as a checked TF_CONFIG dict
        (tf_config.parse_tf_config), and the GPUs this task uses.

    Raises:
        UserError: naming what is wrong: a step of fewer than 2 tasks;
            Slurm variables unset, not numbers or disagreeing
            (SLURM_NTASKS, SLURM_STEP_NUM_TASKS, SLURM_PROCID, SLURM_LOCALID,
            SLURMD_NODENAME), or a layout the resolver rejects or that
            lacks this task; TF_SLURM_PORT_BASE not a port from 1024 to
            65000; fewer GPUs than the node's tasks; GPUs that do not divide
            evenly over the step's nodes.
    """
    env = os.environ
    job = slurm_job_id()
    step = env.get("SLURM_STEP_ID", env.get("SLURM_STEPID", ""))
    tasks = slurm_int("SLURM_STEP_NUM_TASKS")
    if "SLURM_NTASKS" in env and slurm_int("SLURM_NTASKS") != tasks:
        raise UserError(f"inconsistent Slurm step: SLURM_NTASKS={env['SLURM_NTASKS']} but "
                        f"SLURM_STEP_NUM_TASKS={tasks}")
    if tasks < 2:
        raise UserError(f"Slurm step {job}.{step} runs {tasks} task; "
                        "--strategy=multi_worker_mirrored needs 2 or more (srun -n 2, or "
                        "--ntasks-per-node=N on several nodes); one process on one node "
                        "takes --strategy=mirrored")
    rank, local = slurm_int("SLURM_PROCID"), slurm_int("SLURM_LOCALID")
    if rank >= tasks:
        raise UserError(f"inconsistent Slurm step: SLURM_PROCID={rank} is outside its "
                        f"{tasks} tasks (0 to {tasks - 1})")
    node = env.get("SLURMD_NODENAME") or env.get("SLURM_TOPOLOGY_ADDR")
    if not node:
        raise UserError("inconsistent Slurm step: SLURMD_NODENAME, this task's node, "
                        "is not set")
    base = port_base(job, step)
    try:
        workers = _slurm_workers(base, gpus_per_node=tasks, gpus_per_task=1)
    except (RuntimeError, ValueError, AssertionError, KeyError) as e:
        raise UserError(f"inconsistent Slurm step: {_slurm_step_layout()} "
                        f"({one_line(e)})") from None
    own = f"{node}:{base + local}"
    if own not in workers:
        raise UserError(f"inconsistent Slurm step: this task (node {node}, local task "
                        f"{local}) is not among the tasks that {_slurm_step_layout()} "
                        "describe")
    local_tasks = sum(1 for address in workers if address.rpartition(":")[0] == node)
    gpus: tuple[int, ...] = ()
    if visible_gpus:
        per_node, per_task, gpus = _slurm_gpu_share(visible_gpus, local_tasks, local, node)
        try:  # the resolver's own check of the real counts, over every node
            _slurm_workers(base, gpus_per_node=per_node, gpus_per_task=per_task)
        except RuntimeError as e:
            raise UserError(f"the step's GPUs do not divide evenly: {per_task} GPU(s) per "
                            f"task and {per_node} on node {node}, but some node runs more "
                            f"tasks ({one_line(e)}); give every node the same "
                            "--ntasks-per-node") from None
    config = {"cluster": {"worker": workers},
              "task": {"type": "worker", "index": workers.index(own)}}
    logging.info("Slurm job %s step %s: task %d of %d is worker %d%s at %s%s", job, step,
                 rank, tasks, workers.index(own),
                 " (the chief)" if workers.index(own) == 0 else "", own,
                 f", GPUs {list(gpus)} of the {visible_gpus} it sees" if gpus else "")
    return SlurmTask(parse_tf_config(json.dumps(config)), gpus)


def slurm_cluster() -> dict:
    """The Slurm step as TF_CONFIG, with this task's GPUs made TensorFlow's.

    On GPU nodes where this task uses fewer GPUs than it sees, only its own
    are made visible (tf.config.set_visible_devices), which works only
    before TensorFlow has started its runtime.

    Returns:
        The step in TF_CONFIG form (slurm_tf_config's config).

    Raises:
        UserError: what slurm_tf_config raises, or TensorFlow already
            started, so this task's GPUs cannot be assigned.
    """
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
    """Inside a Slurm job, names what the command leaves unnamed after the job.

    --run_name (--mode=train) or --sweep_name (--mode=tune) becomes
    `slurm-<job id>`, the same on every task, so that a requeued job (it
    keeps its id) or the same srun run again in the job resumes its run.
    Outside Slurm, `options` is returned as it is.

    Args:
        options: the command's flags (common.config.options.RunOptions).

    Returns:
        `options`, or a copy (dataclasses.replace) with the name set.

    Raises:
        UserError: several tasks of a step would each train on their own (a
            strategy other than multi_worker_mirrored, outside --mode=tune,
            where they make a distributed sweep), multi_worker_mirrored
            is asked for in the job but outside a step (no srun), or
            SLURM_STEP_NUM_TASKS is not a number.
    """
    job = slurm_job_id()
    if job is None:
        return options
    if options.strategy == "multi_worker_mirrored":
        check_slurm_step()
    tasks = slurm_int("SLURM_STEP_NUM_TASKS") if in_slurm_step() else 1
    # Several tasks of --mode=tune without multi_worker_mirrored are a
    # distributed sweep (common/distribute/sweep_cluster.py).
    if tasks > 1 and options.strategy != "multi_worker_mirrored" and options.mode != "tune":
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
