"""MultiWorkerMirroredStrategy on a real Slurm: a private one-node cluster.

The module's fixture starts munged, slurmctld and slurmd with their own key,
socket, state, spool, pid and log folders and a generated slurm.conf under
a temporary folder (as root, which Slurm needs for SlurmUser=root), and
stops them at the end by the PIDs it started. Where Slurm is not installed
(`apt-get install slurm-wlm munge`) or does not start, the Slurm tests are
skipped with the reason. The tests of how Slurm's variables are read run
everywhere.
"""

import dataclasses
import json
import os
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import pytest

from common.config.options import RunOptions
from common.distribute import clusters, slurm as slurm_lib
from common.distribute.local_cluster import free_ports
from common.errors import UserError
from tests.fixtures import history_epochs, write_idx_dataset

ROOT = pathlib.Path(__file__).resolve().parent.parent
DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("srun", "salloc", "scancel", "scontrol", "sinfo", "squeue")


# How Slurm's variables are read (no Slurm needed) ----------------------------

def slurm_step_env(monkeypatch, *, procid=0, localid=None, ntasks=2, nodelist="n1",
                   tasks_per_node=None, node="n1", job="77", step="3"):
    """This process made to look like task `procid` of an srun step."""
    for name in list(os.environ):
        if name.startswith("SLURM") or name in ("TF_CONFIG", slurm_lib.SLURM_PORT_BASE_ENV):
            monkeypatch.delenv(name)
    values = {"SLURM_JOB_ID": job, "SLURM_STEP_ID": step, "SLURM_PROCID": procid,
              "SLURM_LOCALID": procid if localid is None else localid,
              "SLURM_NTASKS": ntasks, "SLURM_STEP_NUM_TASKS": ntasks,
              "SLURM_STEP_NODELIST": nodelist,
              "SLURM_STEP_TASKS_PER_NODE": tasks_per_node or str(ntasks),
              "SLURMD_NODENAME": node}
    for name, value in values.items():
        monkeypatch.setenv(name, str(value))


def test_a_step_becomes_tf_config_with_task_0_the_chief(monkeypatch):
    slurm_step_env(monkeypatch, procid=1)
    monkeypatch.setenv(slurm_lib.SLURM_PORT_BASE_ENV, "23000")
    task = slurm_lib.slurm_tf_config(visible_gpus=0)  # a CPU-only node
    assert task.config == {"cluster": {"worker": ["n1:23000", "n1:23001"]},
                           "task": {"type": "worker", "index": 1}}
    assert task.gpus == ()
    assert slurm_lib.in_slurm_step() and clusters.expected_workers() == 2


def test_two_nodes_give_each_task_its_node_and_port(monkeypatch):
    # 4 tasks, 2 per node: task 2 is the first task of node b.
    slurm_step_env(monkeypatch, procid=2, localid=0, ntasks=4, nodelist="a,b",
                   tasks_per_node="2(x2)", node="b")
    monkeypatch.setenv(slurm_lib.SLURM_PORT_BASE_ENV, "23000")
    config = slurm_lib.slurm_tf_config().config
    assert config["cluster"]["worker"] == ["a:23000", "a:23001", "b:23000", "b:23001"]
    assert config["task"]["index"] == 2


def test_tasks_placed_cyclically_still_find_themselves(monkeypatch):
    # srun -m cyclic: task 1 is the first task of node b, task 2 the second of a.
    for procid, node, localid, index in ((0, "a", 0, 0), (1, "b", 0, 2), (2, "a", 1, 1)):
        slurm_step_env(monkeypatch, procid=procid, localid=localid, ntasks=4,
                       nodelist="a,b", tasks_per_node="2(x2)", node=node)
        assert slurm_lib.slurm_tf_config().config["task"]["index"] == index


def test_tf_config_wins_over_the_slurm_step_in_the_worker_count(monkeypatch):
    slurm_step_env(monkeypatch)
    monkeypatch.setenv("TF_CONFIG", json.dumps({
        "cluster": {"worker": ["h:1", "h:2", "h:3"]}, "task": {"type": "worker", "index": 0}}))
    assert clusters.expected_workers() == 3


def test_ports_follow_the_job_and_step(monkeypatch):
    slurm_step_env(monkeypatch, job="77", step="3")
    first = slurm_lib.slurm_tf_config().config["cluster"]["worker"]
    slurm_step_env(monkeypatch, job="77", step="4")
    second = slurm_lib.slurm_tf_config().config["cluster"]["worker"]
    assert first != second
    for address in first + second:
        assert 20000 <= int(address.rpartition(":")[2]) < 32768


@pytest.mark.parametrize("visible, on_node, localid, expected", [
    (4, None, 1, (2, 3)),    # 2 tasks share the node's 4 GPUs: task 1 takes 2 and 3
    (1, "2", 1, (0,)),       # Slurm bound one GPU to each task: use the one it sees
])
def test_gpus_are_shared_among_a_nodes_tasks(monkeypatch, visible, on_node, localid, expected):
    slurm_step_env(monkeypatch, procid=localid)
    if on_node:
        monkeypatch.setenv("SLURM_GPUS_ON_NODE", on_node)
    assert slurm_lib.slurm_tf_config(visible_gpus=visible).gpus == expected


@pytest.mark.parametrize("change, message", [
    (dict(ntasks=1), r"runs 1 task; --strategy=multi_worker_mirrored needs 2 or more"),
    (dict(tasks_per_node="3"), r"inconsistent Slurm step: SLURM_STEP_NUM_TASKS='2', "
                               r"SLURM_STEP_NODELIST='n1', SLURM_STEP_TASKS_PER_NODE='3'"),
    (dict(procid=2, localid=0), r"SLURM_PROCID=2 is outside its 2 tasks"),
    (dict(node="elsewhere"), r"this task \(node elsewhere, local task 0\) is not among"),
])
def test_a_step_that_cannot_be_a_cluster_is_one_line(monkeypatch, change, message):
    slurm_step_env(monkeypatch, **change)
    with pytest.raises(UserError, match=message) as error:
        slurm_lib.slurm_tf_config()
    assert "\n" not in str(error.value)


def test_two_tasks_sharing_one_gpu_is_one_line(monkeypatch):
    slurm_step_env(monkeypatch)
    with pytest.raises(UserError, match=r"2 tasks on node n1 share 1 GPU\(s\)"):
        slurm_lib.slurm_tf_config(visible_gpus=1)


def test_ntasks_disagreeing_with_the_step_is_one_line(monkeypatch):
    slurm_step_env(monkeypatch)
    monkeypatch.setenv("SLURM_NTASKS", "3")
    with pytest.raises(UserError, match="SLURM_NTASKS=3 but SLURM_STEP_NUM_TASKS=2"):
        slurm_lib.slurm_tf_config()


def test_a_bad_port_base_is_one_line(monkeypatch):
    slurm_step_env(monkeypatch)
    monkeypatch.setenv(slurm_lib.SLURM_PORT_BASE_ENV, "http")
    with pytest.raises(UserError, match="TF_SLURM_PORT_BASE='http' is not a port number"):
        slurm_lib.slurm_tf_config()


def test_runs_and_sweeps_are_named_after_the_job(monkeypatch):
    slurm_step_env(monkeypatch, job="4242")
    options = RunOptions(experiment="mnist_lenet", strategy="multi_worker_mirrored")
    assert slurm_lib.slurm_run_defaults(options).run_name == "slurm-4242"
    named = dataclasses.replace(options, run_name="mine")
    assert slurm_lib.slurm_run_defaults(named).run_name == "mine"
    tune = dataclasses.replace(options, mode="tune")
    assert slurm_lib.slurm_run_defaults(tune).sweep_name == "slurm-4242"
    # In a batch script (a job, no step) one process still gets the job's name.
    monkeypatch.delenv("SLURM_STEP_ID")
    single = RunOptions(experiment="mnist_lenet")
    assert slurm_lib.slurm_run_defaults(single).run_name == "slurm-4242"


def test_multi_worker_in_a_job_but_not_in_a_step_is_one_line(monkeypatch):
    slurm_step_env(monkeypatch)
    monkeypatch.delenv("SLURM_STEP_ID")  # a batch script or an salloc shell
    with pytest.raises(UserError, match=r"inside Slurm job 77 but not in a job step: "
                                        r"start the workers with srun"):
        slurm_lib.slurm_run_defaults(RunOptions(experiment="mnist_lenet",
                                                   strategy="multi_worker_mirrored"))


def test_outside_slurm_nothing_is_named(monkeypatch):
    for name in list(os.environ):
        if name.startswith("SLURM"):
            monkeypatch.delenv(name)
    options = RunOptions(experiment="mnist_lenet", strategy="multi_worker_mirrored")
    assert slurm_lib.slurm_run_defaults(options) == options
    assert not slurm_lib.in_slurm_step()


def test_several_tasks_of_a_one_process_strategy_is_one_line(monkeypatch):
    slurm_step_env(monkeypatch)
    with pytest.raises(UserError, match="--strategy=mirrored trains in one process"):
        slurm_lib.slurm_run_defaults(RunOptions(experiment="mnist_lenet",
                                                   strategy="mirrored"))


# A private Slurm --------------------------------------------------------------

@dataclasses.dataclass
class PrivateSlurm:
    """A one-node Slurm of this test's own: daemons, folders, slurm.conf."""
    root: pathlib.Path
    conf: pathlib.Path
    processes: list  # (name, Popen), in start order

    def env(self) -> dict:
        """The test's environment for Slurm's clients (srun exports it to the
        tasks): this cluster's slurm.conf, the project on PYTHONPATH, and no
        SLURM_* or TF_CONFIG inherited from wherever pytest runs."""
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("SLURM") and k != "TF_CONFIG"}
        env["SLURM_CONF"] = str(self.conf)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT),
                                                          env.get("PYTHONPATH")]))
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def command(self, *args, timeout=60) -> subprocess.CompletedProcess:
        return subprocess.run(list(args), env=self.env(), capture_output=True, text=True,
                              timeout=timeout)

    def logs(self) -> str:
        parts = []
        for path in sorted((self.root / "log").glob("*")):
            parts.append(f"--- {path.name}\n" + path.read_text(errors="replace")[-1500:])
        return "\n".join(parts)

    def stop(self) -> None:
        """Cancels what still runs on this cluster, then stops the daemons
        this test started, by their PIDs, last started first."""
        if any(name == "slurmctld" and p.poll() is None for name, p in self.processes):
            try:
                jobs = self.command("squeue", "-h", "-o", "%i", timeout=20).stdout.split()
                if jobs:
                    self.command("scancel", *jobs, timeout=20)
            except (subprocess.SubprocessError, OSError):
                pass
        for _, process in reversed(self.processes):
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        shutil.rmtree(self.root, ignore_errors=True)


def _slurm_conf(root: pathlib.Path, node: str, cpus: int, ports: list) -> str:
    return "\n".join([
        "ClusterName=private",
        f"SlurmctldHost={node}(127.0.0.1)",
        "SlurmUser=root",
        f"SlurmctldPort={ports[0]}",
        f"SlurmdPort={ports[1]}",
        "AuthType=auth/munge",
        "CredType=cred/munge",
        f"AuthInfo=socket={root}/run/munge.socket",
        f"StateSaveLocation={root}/state",
        f"SlurmdSpoolDir={root}/spool",
        f"SlurmctldPidFile={root}/run/slurmctld.pid",
        f"SlurmdPidFile={root}/run/slurmd.pid",
        f"SlurmctldLogFile={root}/log/slurmctld.log",
        f"SlurmdLogFile={root}/log/slurmd.log",
        f"PlugStackConfig={root}/plugstack.conf",
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_CPU",
        "MpiDefault=none",
        "MailProg=/bin/true",
        "ReturnToService=2",
        "SchedulerType=sched/backfill",
        "JobCompType=jobcomp/none",
        "AccountingStorageType=accounting_storage/none",
        "KillWait=5",  # after a task fails, SIGKILL the rest within 5 s
        "SlurmdParameters=config_overrides",  # CPUs= as written, even above the real count
        f"NodeName={node} NodeAddr=127.0.0.1 CPUs={cpus} State=UNKNOWN",
        f"PartitionName=debug Nodes={node} Default=YES MaxTime=INFINITE State=UP",
        ""])


def start_private_slurm() -> PrivateSlurm:
    """Starts the daemons; pytest.skip with the reason where it cannot."""
    missing = [name for name in DAEMONS + CLIENTS if shutil.which(name) is None]
    if missing:
        pytest.skip(f"Slurm is not installed (missing {', '.join(missing)}; "
                    "apt-get install slurm-wlm munge)")
    if os.geteuid() != 0:
        pytest.skip("a private Slurm needs root here (SlurmUser=root)")
    node = socket.gethostname().split(".")[0]
    try:
        socket.gethostbyname(node)
    except OSError:
        pytest.skip(f"this machine's name {node!r} does not resolve; Slurm and the "
                    "workers address the node by it")
    # munged wants every folder above its socket open to all (mkdtemp is not).
    root = pathlib.Path(tempfile.mkdtemp(prefix="slurm-", dir="/tmp"))
    root.chmod(0o755)
    for sub in ("run", "state", "spool", "log"):
        (root / sub).mkdir(mode=0o755)
    (root / "munge").mkdir(mode=0o700)
    key = root / "munge" / "munge.key"
    key.write_bytes(os.urandom(128))
    key.chmod(0o400)
    (root / "plugstack.conf").write_text("")
    conf = root / "slurm.conf"
    conf.write_text(_slurm_conf(root, node, max(2, os.cpu_count() or 1), free_ports(2)))
    cluster = PrivateSlurm(root, conf, [])
    commands = {
        "munged": ["munged", "--foreground", f"--socket={root}/run/munge.socket",
                   f"--key-file={key}", f"--log-file={root}/log/munged.log",
                   f"--pid-file={root}/run/munged.pid",
                   f"--seed-file={root}/munge/munged.seed"],
        "slurmctld": ["slurmctld", "-D", "-f", str(conf)],
        "slurmd": ["slurmd", "-D", "-f", str(conf)],
    }
    try:
        for name in DAEMONS:
            with open(root / "log" / f"{name}.out", "w") as out:
                cluster.processes.append((name, subprocess.Popen(
                    commands[name], stdout=out, stderr=subprocess.STDOUT,
                    env=cluster.env(), start_new_session=True)))
            if name == "munged":
                _wait_for(lambda: (root / "run" / "munge.socket").exists(), 15)
        _wait_for(lambda: cluster.command("sinfo", "-h", "-o", "%T",
                                          timeout=20).stdout.strip() == "idle", 30)
    except (TimeoutError, OSError, subprocess.SubprocessError) as e:
        exited = [f"{name} exited {p.returncode}" for name, p in cluster.processes
                  if p.poll() is not None]
        logs = cluster.logs()
        cluster.stop()
        exited = ", ".join(exited) or "no daemon exited"
        pytest.skip(f"the private Slurm did not start ({e}; {exited}):\n{logs}")
    return cluster


def _wait_for(ready, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            raise TimeoutError(f"not ready within {timeout:g} s")
        time.sleep(0.2)


@pytest.fixture(scope="module")
def slurm():
    cluster = start_private_slurm()
    yield cluster
    cluster.stop()


@pytest.fixture(scope="module")
def idx_dir(tmp_path_factory):
    return write_idx_dataset(tmp_path_factory.mktemp("idx"), num_train=400, num_test=100)


def launch(*args, srun=("-n", "2")) -> list:
    """An srun command (its options `srun`) running launch.py: each task's
    output labelled with its task id, the step failed as soon as one task
    fails. sys.executable is the venv's python; srun exports the test's
    environment (PYTHONPATH, SLURM_CONF) to the tasks."""
    return ["srun", *srun, "--kill-on-bad-exit=1", "--label", sys.executable, "-u",
            str(ROOT / "launch.py"), "--strategy=multi_worker_mirrored", "--verbose=2", *args]


def task_lines(output: str, pattern: str) -> dict:
    """{task id: the first group of `pattern`} over srun's labelled lines."""
    found = {}
    for task, rest in re.findall(r"^\s*(\d+): (.*)$", output, re.MULTILINE):
        match = re.search(pattern, rest)
        if match and task not in found:
            found[task] = match.group(1)
    return found


# Training on it ---------------------------------------------------------------

@pytest.mark.slow
def test_srun_two_tasks_train_one_run_named_after_the_job(slurm, idx_dir, tmp_path):
    results_dir = tmp_path / "results"
    result = slurm.command(*launch(
        "--experiment=mnist_lenet", f"--data_dir={idx_dir}", f"--results_dir={results_dir}",
        "--epochs=2", "--batch_size=32"), timeout=240)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:] + slurm.logs()
    runs = list((results_dir / "mnist_lenet").iterdir())
    assert len(runs) == 1 and re.fullmatch(r"slurm-\d+", runs[0].name), runs
    run_dir = runs[0]
    # Both tasks named the run after the job, without --run_name.
    assert task_lines(output, r"--run_name=(slurm-\d+) \(a requeued") == {
        "0": run_dir.name, "1": run_dir.name}
    assert "task 0 of 2 is worker 0 (the chief)" in output
    checksums = task_lines(output, r"Final weights checksum: (\w+)")
    assert set(checksums) == {"0", "1"} and checksums["0"] == checksums["1"]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "completed"
    assert metrics["num_replicas"] == 2
    assert metrics["strategy"] == "MultiWorkerMirroredStrategy"
    assert metrics["weights_checksum"] == checksums["0"]
    assert history_epochs(run_dir) == [0, 1]
    assert not list(run_dir.rglob("workertemp_*"))  # only the chief's files remain


@pytest.mark.slow
def test_a_step_of_one_task_is_one_line(slurm, tmp_path):
    result = slurm.command(*launch("--experiment=mnist_lenet", f"--results_dir={tmp_path}",
                                   srun=("-n", "1")), timeout=120)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert re.search(r"launch.py: error: Slurm step \d+\.\d+ runs 1 task; "
                     r"--strategy=multi_worker_mirrored needs 2 or more", result.stderr), \
        result.stderr[-2000:]


def _step_pids(slurm, job: str) -> dict:
    """{task id: pid} of the job's running step, from scontrol listpids."""
    listed = slurm.command("scontrol", "listpids", job, timeout=20).stdout
    return {int(task): int(pid) for pid, task in
            re.findall(r"^(\d+)\s+\d+\s+\d+\s+\d+\s+(\d+)\s*$", listed, re.MULTILINE)}


@pytest.mark.slow
def test_a_killed_task_fails_the_step_and_the_same_srun_resumes(slurm, tmp_path):
    data = write_idx_dataset(tmp_path / "idx", num_train=800, num_test=100)
    epochs = 4
    # One allocation, two steps in it: what a requeued job does (same job id,
    # so the same run name) without waiting for the scheduler.
    granted = slurm.command("salloc", "-n", "2", "--no-shell", timeout=60)
    job = re.search(r"Granted job allocation (\d+)", granted.stderr)
    assert job, granted.stderr
    job = job.group(1)
    run_dir = tmp_path / "results" / "mnist_lenet" / f"slurm-{job}"
    command = launch("--experiment=mnist_lenet", f"--data_dir={data}",
                     f"--results_dir={tmp_path / 'results'}", f"--epochs={epochs}",
                     "--batch_size=32", srun=(f"--jobid={job}", "-n", "2"))
    try:
        log_path = tmp_path / "first.log"
        with open(log_path, "w") as log:
            first = subprocess.Popen(command, env=slurm.env(), stdout=log,
                                     stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 240
        while not history_epochs(run_dir):
            if first.poll() is not None or time.monotonic() > deadline:
                first.kill()
                pytest.fail("the step ended before a task could be killed:\n"
                            + log_path.read_text()[-4000:])
            time.sleep(0.05)
        pids = _step_pids(slurm, job)
        os.kill(pids[1], signal.SIGKILL)  # task 1, a non-chief worker, dies
        killed_at = time.monotonic()
        first.wait(timeout=120)
        stopped_after = time.monotonic() - killed_at
        print(f"the step stopped {stopped_after:.1f} s after task 1 was killed")
        output = log_path.read_text()
        assert first.returncode != 0
        assert stopped_after < 60, output[-3000:]  # the step failed, no hang
        done_before = history_epochs(run_dir)
        assert done_before and len(done_before) < epochs
        assert not (run_dir / "metrics.json").exists()

        resumed = subprocess.run(command, env=slurm.env(), capture_output=True, text=True,
                                 timeout=300)
        output = resumed.stdout + resumed.stderr
        assert resumed.returncode == 0, output[-4000:]
        assert "Resuming run" in output
        assert not re.search(r"^\s*\d+: Epoch 1/", output, re.MULTILINE)  # not restarted
        # Both tasks pick up after the last epoch backed up (the one after
        # history.csv's last row, or the next where the kill fell between
        # the backup and the row).
        resumed_at = task_lines(output, r"^Epoch (\d+)/")
        assert set(resumed_at) == {"0", "1"} and resumed_at["0"] == resumed_at["1"]
        assert int(resumed_at["0"]) - 1 in (len(done_before), len(done_before) + 1)
        assert history_epochs(run_dir) == list(range(epochs))  # every epoch once
        metrics = json.loads((run_dir / "metrics.json").read_text())
        assert metrics["num_replicas"] == 2 and metrics["status"] == "completed"
    finally:
        slurm.command("scancel", job, timeout=20)


@pytest.mark.slow
def test_the_sbatch_script_runs_and_a_requeued_job_resumes(slurm, tmp_path):
    script = (ROOT / "cluster" / "slurm" / "train.sbatch").read_text()
    assert "#SBATCH --requeue" in script
    assert "srun --kill-on-bad-exit=1" in script and "--strategy=multi_worker_mirrored" in script
    # This node has no GPUs that Slurm knows of: the copy drops the GPU line;
    # the rest is the shipped script, its #SBATCH lines overridden as a user
    # would, on sbatch's command line, and launch.py flags added after it.
    copy = tmp_path / "train.sbatch"
    copy.write_text(re.sub(r"^#SBATCH --gpus-per-node=.*$", "", script, flags=re.MULTILINE))
    data = write_idx_dataset(tmp_path / "idx", num_train=800, num_test=100)
    epochs = 4
    results_dir = tmp_path / "results"
    submitted = subprocess.run(
        ["sbatch", "--parsable", "--nodes=1", "--ntasks-per-node=2", "--cpus-per-task=1",
         f"--output={tmp_path}/job-%j.out", str(copy), "--dataset=mnist",
         f"--data_dir={data}", f"--results_dir={results_dir}", f"--epochs={epochs}",
         "--batch_size=32"],
        cwd=ROOT, env=dict(slurm.env(), PYTHON=sys.executable), capture_output=True,
        text=True, timeout=60)
    assert submitted.returncode == 0, submitted.stderr
    job = submitted.stdout.strip().split(";")[0]
    run_dir = results_dir / "mnist_lenet" / f"slurm-{job}"
    log = tmp_path / f"job-{job}.out"

    def state() -> str:
        return slurm.command("squeue", "-h", "-j", job, "-o", "%T", timeout=20).stdout.strip()

    try:
        deadline = time.monotonic() + 240
        while not history_epochs(run_dir):
            assert state() and time.monotonic() < deadline, \
                "the job ended before it could be requeued:\n" + log.read_text()[-4000:]
            time.sleep(0.1)
        # What a node failure or a preemption does to a --requeue job.
        requeued = slurm.command("scontrol", "requeue", job, timeout=20)
        assert requeued.returncode == 0, requeued.stderr
        done_before = history_epochs(run_dir)
        # Slurm holds a requeued job back for a while; start it now, but only
        # once the first run's tasks are gone and a second has passed: slurmd
        # refuses a credential issued within the second its job was revoked
        # in ("Job credential revoked"), which Slurm's own hold avoids.
        while "DUE TO JOB REQUEUE" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.2)
        while slurm.command("scontrol", "listpids", job, timeout=20).stdout.count("\n") > 1 \
                and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(2)
        while state() != "RUNNING" and time.monotonic() < deadline:
            if state() == "PENDING":
                slurm.command("scontrol", "update", f"JobId={job}", "StartTime=now",
                              timeout=20)
            time.sleep(0.5)
        while state() and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not state(), "the requeued job did not finish in time"
    finally:
        slurm.command("scancel", job, timeout=20)
    output = log.read_text()
    before, cut, after = output.partition("DUE TO JOB REQUEUE")
    assert cut, output[-4000:]
    assert "Starting run" in before and "Resuming run" in after, output[-4000:]
    assert task_lines(after, r"--run_name=(slurm-\d+) \(a requeued") == {
        "0": run_dir.name, "1": run_dir.name}  # the same job id: the same run
    assert not re.search(r"^\s*\d+: Epoch 1/", after, re.MULTILINE)  # resumed, not restarted
    assert 0 < len(done_before) < epochs
    assert history_epochs(run_dir) == list(range(epochs))
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["num_replicas"] == 2


# A sweep on it -------------------------------------------------------------------

@pytest.mark.slow
def test_srun_three_tasks_run_a_sweep_with_task_0_the_oracle(slurm, idx_dir, tmp_path):
    results_dir = tmp_path / "results"
    # --overcommit: three tasks on the private node's two CPUs.
    command = ["srun", "-n", "3", "--overcommit", "--label", sys.executable, "-u",
               str(ROOT / "launch.py"),
               "--experiment=mnist_lenet", "--mode=tune", "--tuner=random", "--max_trials=3",
               "--max_epochs=1", f"--data_dir={idx_dir}", f"--results_dir={results_dir}",
               "--batch_size=32", "--verbose=0"]
    result = slurm.command(*command, timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:] + slurm.logs()
    (sweep_dir,) = list((results_dir / "mnist_lenet").iterdir())
    assert re.fullmatch(r"slurm-\d+", sweep_dir.name)
    assert re.search(r"^\s*0: .*this process \(chief\) serves the oracle at", output, re.M)
    workers = task_lines(output, r"Distributed sweep: worker (tuner\d)")
    assert workers == {"1": "tuner0", "2": "tuner1"}
    trials = sorted(sweep_dir.glob("trial_*"))
    assert len(trials) == 3
    ran = {json.loads((t / "config.json").read_text())["trial"]["worker"] for t in trials}
    assert ran <= {"tuner0", "tuner1"} and ran
    best = json.loads((sweep_dir / "best_hparams.json").read_text())
    assert best["trials_completed"] == 3


def test_the_tune_sbatch_script_is_a_sweep_without_variables():
    script = (ROOT / "cluster" / "slurm" / "tune.sbatch").read_text()
    assert "--mode=tune" in script and "srun --label" in script
    assert "KERASTUNER" not in script.replace("Keras Tuner", "")  # Slurm gives the roles
    assert "--strategy=multi_worker_mirrored" not in script
