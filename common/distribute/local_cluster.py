"""Runs launch.py as a MultiWorkerMirroredStrategy cluster on this machine.

    python -m common.distribute.local_cluster --workers=2 -- --experiment=NAME --epochs=2

Picks free localhost ports, starts one `launch.py` process per worker with
its own TF_CONFIG and `--strategy=multi_worker_mirrored`, prefixes each
worker's output with its index, and exits non-zero as soon as any worker
fails, stopping the others, so that a lost worker never leaves the job
hanging. Worker 0 is the chief: it writes the run folder. The same command
with the printed --run_name resumes an interrupted run from its last backup.
"""

import datetime
import json
import os
import sys
import time

from absl import app, flags

from common.distribute.processes import flags_parser, free_ports, start, stop, value_of

flags.DEFINE_integer("workers", 2, "Worker processes to start.", lower_bound=1)
flags.DEFINE_integer("grace_seconds", 10, "After a worker fails, how long the others "
                     "get to stop before they are killed.", lower_bound=0)
FLAGS = flags.FLAGS



def tf_config(ports: list[int], index: int) -> str:
    """The TF_CONFIG of one local worker: every port a worker on 127.0.0.1.

    Args:
        ports: the cluster's ports, one per worker, in worker order.
        index: this worker's index in `ports` (0 is the chief).

    Returns:
        TF_CONFIG as a JSON string, with no "chief" job.
    """
    return json.dumps({
        "cluster": {"worker": [f"127.0.0.1:{port}" for port in ports]},
        "task": {"type": "worker", "index": index},
    })


def worker_args(launch_args: list[str]) -> tuple[list[str], str]:
    """The launch.py arguments every worker gets, and the run name they share.

    Drops the given --strategy (as --strategy=NAME or --strategy NAME) and
    adds --strategy=multi_worker_mirrored; adds
    --run_name=cluster-<date>-<time> (local time) where none is given and the
    mode is not tune.

    Args:
        launch_args: the launch.py flags given after --.

    Returns:
        (the workers' arguments, the run name: given or picked; None with
        --mode=tune and no --run_name).
    """
    args, skip = [], False
    for arg in launch_args:
        if skip:
            skip = False
        elif arg == "--strategy":  # its value is the next argument
            skip = True
        elif not arg.startswith("--strategy="):
            args.append(arg)
    args.append("--strategy=multi_worker_mirrored")
    run_name = value_of(args, "run_name")
    if run_name is None and value_of(args, "mode") != "tune":
        run_name = "cluster-" + datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        args.append(f"--run_name={run_name}")
    return args, run_name


def run_cluster(workers: int, launch_args: list[str], grace_seconds: int = 10) -> int:
    """Starts the workers and waits for them.

    Each worker is `launch.py` in a session of its own with its TF_CONFIG
    (tf_config), its output prefixed with "[worker <i>] ". As soon as one
    exits non-zero (or on Ctrl-C), the others get SIGTERM, and SIGKILL
    after `grace_seconds`.

    Args:
        workers: how many worker processes to start.
        launch_args: the launch.py flags (worker_args adds the strategy and
            the run name).
        grace_seconds: seconds the other workers get to stop after a
            failure before they are killed.

    Returns:
        0 if every worker exited with 0, else 1 (whatever the failed
        worker's own exit code; also after Ctrl-C).
    """
    args, run_name = worker_args(launch_args)
    ports = free_ports(workers)
    processes, pumps = [], []
    print(f"[cluster] {workers} workers on ports {ports}"
          + (f"; run {run_name} (rerun with --run_name={run_name} to resume)"
             if run_name else ""), flush=True)
    for index in range(workers):
        env = dict(os.environ, TF_CONFIG=tf_config(ports, index))
        process, reader = start(args, env, f"[worker {index}] ")
        print(f"[cluster] worker {index} pid {process.pid}", flush=True)
        processes.append(process)
        pumps.append(reader)
    failed = None
    try:
        while failed is None and any(p.poll() is None for p in processes):
            for index, process in enumerate(processes):
                if process.poll() not in (None, 0):
                    failed = (index, process.returncode)
                    break
            time.sleep(0.2)
        if failed is None:  # all exited; one may have failed in the last round
            failed = next(((i, p.returncode) for i, p in enumerate(processes)
                           if p.returncode != 0), None)
    except KeyboardInterrupt:
        failed = (-1, 130)
    if failed is not None:
        index, code = failed
        if index >= 0:
            print(f"[cluster] worker {index} exited with {code}; stopping the others",
                  flush=True)
        stop(processes, grace_seconds)
    for reader in pumps:
        reader.join(timeout=5)
    if failed is None:
        print("[cluster] all workers finished", flush=True)
        return 0
    if run_name:
        print(f"[cluster] to resume: the same command with --run_name={run_name}",
              flush=True)
    return 1


def main(argv):
    """The command: runs a local cluster with the flags after --.

    Args:
        argv: absl's remaining arguments; argv[1:] are launch.py's flags.

    Returns:
        The exit code: 2 when no --experiment is among launch.py's flags,
        else run_cluster's.
    """
    launch_args = argv[1:]
    if not any(a.startswith("--experiment") for a in launch_args):
        print("local_cluster: error: pass launch.py's flags after --, for example: "
              "python -m common.distribute.local_cluster --workers=2 -- --experiment=NAME",
              file=sys.stderr)
        return 2
    return run_cluster(FLAGS.workers, launch_args, FLAGS.grace_seconds)


if __name__ == "__main__":
    app.run(main, flags_parser=flags_parser("local_cluster"))
