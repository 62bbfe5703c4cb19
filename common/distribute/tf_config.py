"""TF_CONFIG, the cluster description MultiWorkerMirroredStrategy reads, checked."""

import json

from common.errors import UserError

CLUSTER_JOBS = ("chief", "worker")


def parse_tf_config(raw: str) -> dict:
    """TF_CONFIG, checked: a cluster of "host:port" lists and this task in it.

    The jobs may be chief and worker. The form is TensorFlow's, read by its TFConfigClusterResolver
    (TensorFlow's multi-worker training guide):
    {"cluster": {"chief": [...], "worker": ["host:port", ...]},
    "task": {"type": "worker", "index": 0}}. This check, and this project's
    code, read a task without "index" as index 0.

    Args:
        raw: the value of the TF_CONFIG environment variable, a JSON string.

    Returns:
        The parsed TF_CONFIG, a dict with "cluster" and "task", unchanged.

    Raises:
        UserError: naming what is wrong: not JSON; no cluster, or an empty
            one; a job other than chief and worker; addresses that are not
            a list of "host:port" strings; more than one chief; no task; an
            evaluator task (not run by this project); a task type that is
            not a job of the cluster, or an index outside its job.
    """
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
