"""Runs a Keras Tuner sweep as a chief and N workers on this machine.

    python -m common.distribute.local_sweep --workers=2 -- --experiment=NAME --mode=tune --tuner=random --max_trials=8

Picks a free localhost port, starts `launch.py` once as the chief (it
serves the oracle, KERASTUNER_TUNER_ID=chief) and once per worker
(KERASTUNER_TUNER_ID=tuner0, tuner1, ...), all with the same flags, each
worker's output prefixed with its id. Each worker gets an equal share of the
machine's cores for TensorFlow's threads (TF_NUM_INTRAOP_THREADS,
OMP_NUM_THREADS; --threads_per_worker sets it), so that the workers share
the cores instead of fighting over them. A worker killed by a signal is
started again (up to --restarts times each), and the oracle hands it back
its unfinished trial; when the chief ends, or fails, every worker is
stopped. --sweep_name is added where none is given (the same command with
it resumes the sweep).
"""

import datetime
import os
import signal
import subprocess
import sys
import time

from absl import app, flags

from common.distribute import processes
from common.distribute.sweep_cluster import ORACLE_IP_ENV, ORACLE_PORT_ENV, TUNER_ID_ENV

flags.DEFINE_integer("workers", 2, "Worker processes (each runs trials).", lower_bound=1)
flags.DEFINE_integer("threads_per_worker", 0, "TensorFlow threads per worker; 0: the "
                     "machine's cores divided among the workers.", lower_bound=0)
flags.DEFINE_integer("restarts", 2, "Times a worker killed by a signal is started again.",
                     lower_bound=0)
flags.DEFINE_integer("grace_seconds", 30, "How long the workers get to stop after the chief "
                     "ends before they are killed.", lower_bound=0)
FLAGS = flags.FLAGS


def sweep_args(launch_args: list[str]) -> tuple[list[str], str]:
    """The launch.py arguments every process gets, and the sweep's name.

    Adds --mode=tune where no --mode is given and --sweep_name=sweep-<date>-
    <time> (local time) where none is given.

    Args:
        launch_args: the launch.py flags given after --.

    Returns:
        (the arguments, the sweep name).
    """
    args = list(launch_args)
    if processes.value_of(args, "mode") is None:
        args.append("--mode=tune")
    name = processes.value_of(args, "sweep_name")
    if name is None:
        name = "sweep-" + datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        args.append(f"--sweep_name={name}")
    return args, name


def thread_env(threads: int) -> dict[str, str]:
    """Environment variables that hold TensorFlow (and oneDNN's OpenMP) to
    `threads` threads for its ops, and one for running them side by side.

    Args:
        threads: the threads a worker may use, at least 1.

    Returns:
        {"TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS",
        "OMP_NUM_THREADS"}.
    """
    return {"TF_NUM_INTRAOP_THREADS": str(threads), "TF_NUM_INTEROP_THREADS": "1",
            "OMP_NUM_THREADS": str(threads)}


def _start(args: list[str], env: dict, prefix: str):
    process, reader = processes.start(args, env, prefix)
    print(f"[sweep] {env[TUNER_ID_ENV]} pid {process.pid}", flush=True)
    return process, reader


def run_sweep(workers: int, launch_args: list[str], threads_per_worker: int = 0,
              restarts: int = 2, grace_seconds: int = 30) -> int:
    """Starts the chief and the workers and waits for the chief.

    Args:
        workers: how many worker processes to start.
        launch_args: the launch.py flags (sweep_args() adds --mode and
            --sweep_name where missing).
        threads_per_worker: TensorFlow threads per worker; 0: the cores
            divided among the workers (at least 1).
        restarts: times a worker killed by a signal is started again.
        grace_seconds: how long the workers get to stop after the chief
            ends before they are killed.

    Returns:
        The chief's exit code (0: the sweep finished); 1 when a worker
        failed (not by a signal) and the sweep was stopped, or on Ctrl-C.
    """
    args, name = sweep_args(launch_args)
    port = processes.free_ports(1)[0]
    threads = threads_per_worker or max(1, (os.cpu_count() or 1) // workers)
    base = dict(os.environ, **{ORACLE_IP_ENV: "127.0.0.1", ORACLE_PORT_ENV: str(port)})
    print(f"[sweep] chief and {workers} worker(s), oracle at 127.0.0.1:{port}, {threads} "
          f"TensorFlow thread(s) per worker; sweep {name} (the same command with "
          f"--sweep_name={name} resumes it)", flush=True)
    chief, chief_pump = _start(args, {**base, TUNER_ID_ENV: "chief",
                                      **thread_env(1)}, "[chief] ")
    ids = [f"tuner{i}" for i in range(workers)]
    running, pumps = {}, [chief_pump]
    for tuner_id in ids:
        running[tuner_id] = _start(args, {**base, TUNER_ID_ENV: tuner_id,
                                          **thread_env(threads)}, f"[{tuner_id}] ")
        pumps.append(running[tuner_id][1])
    restarted = {tuner_id: 0 for tuner_id in ids}
    failed = None
    try:
        while chief.poll() is None and failed is None:
            for tuner_id, (process, _) in list(running.items()):
                code = process.poll()
                if code is None or code == 0:
                    continue
                if code < 0 and restarted[tuner_id] < restarts:  # killed by a signal
                    restarted[tuner_id] += 1
                    print(f"[sweep] {tuner_id} was killed ({signal.Signals(-code).name}); "
                          f"starting it again ({restarted[tuner_id]} of {restarts})",
                          flush=True)
                    running[tuner_id] = _start(args, {**base, TUNER_ID_ENV: tuner_id,
                                                      **thread_env(threads)},
                                               f"[{tuner_id}] ")
                    pumps.append(running[tuner_id][1])
                else:
                    failed = (tuner_id, code)
                    break
            time.sleep(0.5)
    except KeyboardInterrupt:
        failed = ("Ctrl-C", 130)
    if failed is not None:
        print(f"[sweep] {failed[0]} exited with {failed[1]}; stopping the sweep (the same "
              f"command resumes it)", flush=True)
        processes.stop([chief] + [p for p, _ in running.values()], grace_seconds=10)
    else:
        # The chief ends when the oracle has no trial left and no worker is
        # left to tell so; a worker still running after the grace is stopped.
        deadline = time.monotonic() + grace_seconds
        for process, _ in running.values():
            try:
                process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        processes.stop([p for p, _ in running.values()], grace_seconds=10)
    for pump in pumps:
        pump.join(timeout=5)
    if failed is not None:
        return 1
    print(f"[sweep] the chief exited with {chief.returncode}", flush=True)
    return chief.returncode


def main(argv):
    """The command: runs a local sweep with the flags after --.

    Args:
        argv: absl's remaining arguments; argv[1:] are launch.py's flags.

    Returns:
        The exit code: 2 when no --experiment is among launch.py's flags
        or they name a --mode other than tune, else run_sweep's.
    """
    launch_args = argv[1:]
    if not any(a.startswith("--experiment") for a in launch_args):
        print("local_sweep: error: pass launch.py's flags after --, for example: "
              "python -m common.distribute.local_sweep --workers=2 -- --experiment=NAME "
              "--mode=tune", file=sys.stderr)
        return 2
    mode = processes.value_of(launch_args, "mode")
    if mode not in (None, "tune"):
        print(f"local_sweep: error: --mode={mode} is not a sweep; local_sweep runs "
              "--mode=tune (leave --mode out); for a training across local workers use "
              "python -m common.distribute.local_cluster", file=sys.stderr)
        return 2
    return run_sweep(FLAGS.workers, launch_args, FLAGS.threads_per_worker, FLAGS.restarts,
                     FLAGS.grace_seconds)


if __name__ == "__main__":
    app.run(main, flags_parser=processes.flags_parser("local_sweep"))
