"""Local processes of a cluster or a sweep: free ports, output prefixed
line by line, and stopping a process group (common.distribute.local_cluster
and common.distribute.local_sweep share them)."""

import os
import pathlib
import signal
import socket
import subprocess
import sys
import threading
import time

LAUNCH = pathlib.Path(__file__).resolve().parents[2] / "launch.py"


def flags_parser(program: str):
    """absl's flag parsing for app.run(flags_parser=...), with a mistake as
    one line naming the program ("local_sweep: error: flag --workers=0: ...")
    instead of absl's FATAL line and its hint.

    Args:
        program: the name the line starts with.

    Returns:
        A function of argv that returns absl's remaining arguments, or exits
        with status 1 after the line.
    """
    from absl import flags

    def parse(argv):
        try:
            return flags.FLAGS(argv)
        except flags.Error as e:
            print(f"{program}: error: {e}", file=sys.stderr)
            sys.exit(1)
    return parse


def free_ports(count: int) -> list[int]:
    """Ports the OS says are free on localhost, no two the same.

    Each is held open until all are picked, so no two are the same. The
    sockets are closed before returning, so another process may take a
    port before a worker binds it.

    Args:
        count: how many ports.

    Returns:
        `count` distinct TCP port numbers on 127.0.0.1.
    """
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def value_of(args: list[str], name: str):
    """The value of launch.py flag --`name` in `args` (--name=value or --name
    value), or None.

    Args:
        args: launch.py's arguments.
        name: the flag's name without dashes.

    Returns:
        The value as given (the last, where the flag is given several
        times, as absl reads it), or None where the flag is absent.
    """
    value = None  # absl takes the last of several
    for i, arg in enumerate(args):
        if arg.startswith(f"--{name}="):
            value = arg.split("=", 1)[1]
        elif arg == f"--{name}" and i + 1 < len(args):
            value = args[i + 1]
    return value


def pump(stream, prefix: str) -> None:
    """Copies a process's output to stdout line by line, each line prefixed.

    Args:
        stream: the process's text stdout.
        prefix: put before every line ("[worker 0] ").
    """
    for line in iter(stream.readline, ""):
        sys.stdout.write(f"{prefix}{line}")
        sys.stdout.flush()
    stream.close()


def stop(processes, grace_seconds: int) -> None:
    """SIGTERM to the process group of each process still running, SIGKILL
    to those still running `grace_seconds` later.

    Args:
        processes: subprocess.Popen objects started in sessions of their own.
        grace_seconds: how long they get to stop.
    """
    for process in processes:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_seconds
    for process in processes:
        try:
            process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def start(args: list[str], env: dict, prefix: str):
    """Starts launch.py with `args` and `env` in a session of its own, its
    output (stdout and stderr together) copied to ours with `prefix`.

    Args:
        args: launch.py's arguments.
        env: the process's whole environment.
        prefix: put before every line of its output.

    Returns:
        (the subprocess.Popen, the thread copying its output).
    """
    process = subprocess.Popen(
        [sys.executable, "-u", str(LAUNCH), *args], env=env, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    reader = threading.Thread(target=pump, args=(process.stdout, prefix), daemon=True)
    reader.start()
    return process, reader
