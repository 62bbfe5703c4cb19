"""Sweeps across processes: Keras Tuner's distributed mode.

Keras Tuner runs one sweep over many processes by three environment
variables, the same command on every process ("Distributed hyperparameter
tuning", Keras guides): KERASTUNER_TUNER_ID (`chief`, or a worker's unique
id such as `tuner0`), KERASTUNER_ORACLE_IP and KERASTUNER_ORACLE_PORT (where
the chief serves the oracle over gRPC). The chief runs the oracle only;
every worker asks it for a trial, runs it and reports the result.

Where the variables come from:
  - set by hand, per process (Kubernetes: a chief pod and a worker
    Deployment; any scheduler): all three, or none;
  - `python -m common.distribute.local_sweep --workers=N -- ...` sets them
    for a chief and N workers on this machine;
  - inside a Slurm step of several tasks (`srun -n N launch.py --mode=tune
    ...`, any strategy but multi_worker_mirrored) they are derived: task 0
    is the chief, on the step's first node, task i > 0 the worker
    `tuner<i-1>`, the port picked from the job and step ids as for
    training (TF_SLURM_PORT_BASE overrides it).
"""

import dataclasses
import os
import re
from typing import Mapping, Optional

from absl import logging

from common.distribute import slurm
from common.errors import UserError

TUNER_ID_ENV = "KERASTUNER_TUNER_ID"
ORACLE_IP_ENV = "KERASTUNER_ORACLE_IP"
ORACLE_PORT_ENV = "KERASTUNER_ORACLE_PORT"
ENVS = (TUNER_ID_ENV, ORACLE_IP_ENV, ORACLE_PORT_ENV)
_TUNER_ID = re.compile(r"[A-Za-z0-9_.-]{1,64}")


@dataclasses.dataclass(frozen=True)
class SweepRole:
    """This process's part in a distributed sweep.

    Attributes:
        tuner_id: KERASTUNER_TUNER_ID: "chief" (Keras Tuner's rule: an id
            holding "chief") or a worker's id.
        host: where the chief serves the oracle (KERASTUNER_ORACLE_IP).
        port: its port (KERASTUNER_ORACLE_PORT).
        source: where the role came from: "environment" or "slurm".
    """
    tuner_id: str
    host: str
    port: int
    source: str = "environment"

    @property
    def is_chief(self) -> bool:
        """Whether this process serves the oracle (Keras Tuner's test: the
        id contains "chief")."""
        return "chief" in self.tuner_id

    @property
    def address(self) -> str:
        """host:port of the oracle."""
        return f"{self.host}:{self.port}"


def _from_environment(env: Mapping[str, str]) -> Optional[SweepRole]:
    given = [name for name in ENVS if env.get(name)]
    if not given:
        return None
    missing = [name for name in ENVS if not env.get(name)]
    if missing:
        raise UserError(f"a distributed sweep needs {', '.join(ENVS)}; {', '.join(given)} "
                        f"set but not {', '.join(missing)}")
    tuner_id, host, port = (env[name] for name in ENVS)
    if not _TUNER_ID.fullmatch(tuner_id):
        raise UserError(f"{TUNER_ID_ENV}={tuner_id!r}: use chief, or a worker id of letters, "
                        "digits, _, . and - (tuner0, tuner1, ...)")
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise UserError(f"{ORACLE_PORT_ENV}={port!r} is not a port number (1 to 65535)")
    return SweepRole(tuner_id, host, int(port))


def _from_slurm(env: Mapping[str, str]) -> Optional[SweepRole]:
    if not slurm.in_slurm_step() or slurm.slurm_int("SLURM_STEP_NUM_TASKS") < 2:
        return None
    from tensorflow.python.distribute.cluster_resolver.slurm_cluster_resolver import (
        expand_hostlist)
    rank = slurm.slurm_int("SLURM_PROCID")
    nodes = expand_hostlist(env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST", ""))
    if not nodes:
        raise UserError("inconsistent Slurm step: SLURM_STEP_NODELIST names no node")
    job = slurm.slurm_job_id()
    step = env.get("SLURM_STEP_ID", env.get("SLURM_STEPID", ""))
    port = slurm.port_base(job, step)
    return SweepRole("chief" if rank == 0 else f"tuner{rank - 1}", nodes[0], port, "slurm")


def sweep_role(mode: str, strategy: str,
               env: Optional[Mapping[str, str]] = None) -> Optional[SweepRole]:
    """This process's part in a distributed sweep, or None for a sweep in
    one process.

    Args:
        mode: --mode; only "tune" sweeps.
        strategy: --strategy; under multi_worker_mirrored the processes of a
            Slurm step train every trial together instead.
        env: the environment (default os.environ).

    Returns:
        The SweepRole from Keras Tuner's three variables, else from the
        Slurm step (several tasks), else None.

    Raises:
        UserError: some of the three variables set but not all; a tuner id
            that is not a plain name; a port that is not one; the variables
            set outside --mode=tune; an inconsistent Slurm step.
    """
    env = os.environ if env is None else env
    role = _from_environment(env)
    if mode != "tune":
        if role is not None:
            raise UserError(f"{', '.join(ENVS)} are set, which run a distributed sweep, but "
                            f"--mode={mode}; unset them, or use --mode=tune")
        return None
    if role is None and strategy != "multi_worker_mirrored":
        role = _from_slurm(env)
    return role


def activate(role: SweepRole) -> None:
    """Sets Keras Tuner's variables for `role` (where they came from Slurm)
    and logs the role in one line.

    Args:
        role: this process's part.
    """
    os.environ.update({TUNER_ID_ENV: role.tuner_id, ORACLE_IP_ENV: role.host,
                       ORACLE_PORT_ENV: str(role.port)})
    if role.is_chief:
        logging.info("Distributed sweep: this process (%s) serves the oracle at %s; the "
                     "workers run the trials", role.tuner_id, role.address)
    else:
        logging.info("Distributed sweep: worker %s, asking the oracle at %s for trials",
                     role.tuner_id, role.address)


def assign_gpus(role: SweepRole) -> tuple[int, ...]:
    """Which GPUs this process uses, made TensorFlow's before its runtime
    starts: none for the chief (it trains nothing); for a worker of a Slurm
    step, the GPUs Slurm binds to its task, or else its share of its node's
    GPUs by local task id (as training splits them: slurm._slurm_gpu_share);
    all it sees for a worker started by hand.

    Args:
        role: this process's part.

    Returns:
        The indices (into the GPUs it sees) it uses.

    Raises:
        UserError: a Slurm node's tasks outnumber its GPUs.
    """
    import tensorflow as tf
    gpus = tf.config.list_physical_devices("GPU")
    if role.is_chief:
        chosen: tuple[int, ...] = ()
    elif role.source == "slurm" and gpus:
        env = os.environ
        node = env.get("SLURMD_NODENAME", "?")
        local_tasks = _tasks_on_this_node(env)
        _, _, chosen = slurm._slurm_gpu_share(len(gpus), local_tasks,
                                              slurm.slurm_int("SLURM_LOCALID"), node)
    else:
        chosen = tuple(range(len(gpus)))
    if gpus and len(chosen) < len(gpus):
        try:
            tf.config.set_visible_devices([gpus[i] for i in chosen], "GPU")
        except RuntimeError:  # TensorFlow started already: it keeps what it has
            logging.warning("TensorFlow had started: %s keeps all %d GPUs", role.tuner_id,
                            len(gpus))
    return chosen


def _tasks_on_this_node(env: Mapping[str, str]) -> int:
    """This node's tasks in the step, from SLURM_STEP_TASKS_PER_NODE
    ("3" or "2(x2),1", one entry per node in SLURM_STEP_NODELIST's order)."""
    from tensorflow.python.distribute.cluster_resolver.slurm_cluster_resolver import (
        expand_hostlist, expand_tasks_per_node)
    nodes = expand_hostlist(env.get("SLURM_STEP_NODELIST", ""))
    counts = expand_tasks_per_node(env.get("SLURM_STEP_TASKS_PER_NODE", "1"))
    node = env.get("SLURMD_NODENAME")
    if node in nodes and len(counts) == len(nodes):
        return counts[nodes.index(node)]
    return counts[0] if counts else 1
