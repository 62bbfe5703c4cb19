"""Sweeps across processes (issue 23): Keras Tuner's chief and workers on
one machine, their faults, and the roles Slurm's variables give."""

import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import time

import pytest

from common.distribute import slurm as slurm_lib, sweep_cluster
from common.errors import UserError
from common.runs.lock import Lock
from tests.fixtures import fashion_mnist_subset, free_port, history_epochs

ROOT = pathlib.Path(__file__).resolve().parent.parent
NOISE = ("WARNING", "oneDNN", "cuda", "absl::Init", "E0000", "I0000", "TensorFlow binary")


# --- roles ---------------------------------------------------------------------

def _env(**values):
    return {k: str(v) for k, v in values.items()}


def test_the_role_comes_from_keras_tuners_three_variables():
    env = _env(KERASTUNER_TUNER_ID="chief", KERASTUNER_ORACLE_IP="10.0.0.1",
               KERASTUNER_ORACLE_PORT=8000)
    role = sweep_cluster.sweep_role("tune", "default", env)
    assert role.is_chief and role.address == "10.0.0.1:8000" and role.source == "environment"
    worker = sweep_cluster.sweep_role("tune", "default", {**env, "KERASTUNER_TUNER_ID": "tuner3"})
    assert not worker.is_chief and worker.tuner_id == "tuner3"
    assert sweep_cluster.sweep_role("tune", "default", {}) is None


@pytest.mark.parametrize("env, message", [
    (_env(KERASTUNER_TUNER_ID="chief"), "KERASTUNER_TUNER_ID set but not "
                                        "KERASTUNER_ORACLE_IP, KERASTUNER_ORACLE_PORT"),
    (_env(KERASTUNER_TUNER_ID="a b", KERASTUNER_ORACLE_IP="h", KERASTUNER_ORACLE_PORT=1),
     "KERASTUNER_TUNER_ID='a b': use chief, or a worker id"),
    (_env(KERASTUNER_TUNER_ID="chief", KERASTUNER_ORACLE_IP="h", KERASTUNER_ORACLE_PORT="x"),
     "KERASTUNER_ORACLE_PORT='x' is not a port number"),
])
def test_a_bad_set_of_variables_is_one_line(env, message):
    with pytest.raises(UserError, match=re.escape(message)):
        sweep_cluster.sweep_role("tune", "default", env)


def test_the_variables_outside_a_sweep_are_refused():
    env = _env(KERASTUNER_TUNER_ID="chief", KERASTUNER_ORACLE_IP="h", KERASTUNER_ORACLE_PORT=9)
    with pytest.raises(UserError, match="run a distributed sweep, but --mode=train"):
        sweep_cluster.sweep_role("train", "default", env)


@pytest.mark.parametrize("modes", [["--mode=train"], ["--mode=tune", "--mode=train"]])
def test_local_sweep_refuses_another_mode_before_starting_anything(modes):
    """--mode=train after -- started three processes that each blamed the
    KERASTUNER_* variables local_sweep itself had set. A flag given twice
    counts as absl reads it: the last. (In a subprocess: local_sweep's
    flags and local_cluster's share names in one process.)"""
    result = subprocess.run([sys.executable, "-m", "common.distribute.local_sweep", "--",
                             "--experiment=mnist_mlp", *modes],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "local_sweep: error: --mode=train is not a sweep; local_sweep runs --mode=tune (leave "
        "--mode out); for a training across local workers use python -m "
        "common.distribute.local_cluster")


def test_a_flag_given_twice_counts_as_absl_reads_it():
    from common.distribute import processes
    assert processes.value_of(["--mode=train", "--mode", "tune"], "mode") == "tune"
    assert processes.value_of(["--mode=tune", "--x=1"], "y") is None


@pytest.mark.parametrize("module", ["local_sweep", "local_cluster"])
def test_a_bad_helper_flag_is_one_line(module):
    """Was absl's "FATAL Flags parsing error" and a second line of advice."""
    result = subprocess.run([sys.executable, "-m", f"common.distribute.{module}",
                             "--workers=0", "--", "--experiment=mnist_mlp"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        f"{module}: error: flag --workers=0: 0 is not a positive integer")
    assert "FATAL" not in result.stderr and "Traceback" not in result.stderr


def test_a_slurm_step_of_three_tasks_is_a_chief_and_two_workers(monkeypatch):
    for name in list(os.environ):
        if name.startswith(("SLURM", "KERASTUNER")) or name == slurm_lib.SLURM_PORT_BASE_ENV:
            monkeypatch.delenv(name)
    roles = []
    for procid in range(3):
        env = _env(SLURM_JOB_ID=77, SLURM_STEP_ID=3, SLURM_PROCID=procid, SLURM_LOCALID=procid,
                   SLURM_NTASKS=3, SLURM_STEP_NUM_TASKS=3, SLURM_STEP_NODELIST="node[2-3]",
                   SLURMD_NODENAME="node2")
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        roles.append(sweep_cluster.sweep_role("tune", "default"))
    assert [r.tuner_id for r in roles] == ["chief", "tuner0", "tuner1"]
    assert {r.address for r in roles} == {f"node2:{slurm_lib.port_base('77', '3')}"}
    assert all(r.source == "slurm" for r in roles)
    # Under multi_worker_mirrored the tasks train each trial together instead.
    assert sweep_cluster.sweep_role("tune", "multi_worker_mirrored") is None
    # And several tasks of a sweep are no error for slurm_run_defaults.
    from common.config.options import RunOptions
    options = slurm_lib.slurm_run_defaults(RunOptions(experiment="mnist_lenet", mode="tune"))
    assert options.sweep_name == "slurm-77"


# --- a chief and workers on this machine ---------------------------------------

@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return fashion_mnist_subset(tmp_path_factory.mktemp("fm"), num_train=900, num_test=200)


def _sweep_args(data, results, name, trials=4, epochs=1, extra=()):
    return ["--experiment=mnist_lenet", "--mode=tune", "--tuner=random",
            f"--max_trials={trials}", f"--max_epochs={epochs}", f"--data_dir={data}",
            f"--results_dir={results}", f"--sweep_name={name}", "--verbose=0",
            "--batch_size=32", *extra]


def _local_sweep(*args, workers=2, timeout=600, **popen):
    return subprocess.run([sys.executable, "-m", "common.distribute.local_sweep",
                           f"--workers={workers}", "--", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout, **popen)


def _trials(sweep_dir):
    return sorted(sweep_dir.glob("trial_*"), key=lambda p: int(p.name.split("_")[1]))


def _clean(text):
    return "\n".join(line for line in text.splitlines() if not any(n in line for n in NOISE))


@pytest.mark.slow
def test_a_chief_and_two_workers_share_the_trials(data, tmp_path):
    result = _local_sweep(*_sweep_args(data, tmp_path, "d1"))
    assert result.returncode == 0, _clean(result.stdout)[-4000:]
    sweep_dir = tmp_path / "mnist_lenet" / "d1"
    trials = _trials(sweep_dir)
    assert [t.name for t in trials] == ["trial_1", "trial_2", "trial_3", "trial_4"]
    workers = {}
    for trial in trials:
        config = json.loads((trial / "config.json").read_text())
        metrics = json.loads((trial / "metrics.json").read_text())
        assert metrics["status"] == "completed"
        workers[trial.name] = config["trial"]["worker"]
    assert set(workers.values()) == {"tuner0", "tuner1"}  # both ran trials
    best = json.loads((sweep_dir / "best_hparams.json").read_text())
    assert best["trials_completed"] == 4 and best["found_at_epochs"] == 1
    out = result.stdout
    assert "[chief]" in out and "serves the oracle at 127.0.0.1:" in out
    assert "oracle only: the workers train" in out
    # The chief loaded no data and trained nothing: its lines say so.
    chief = [line for line in out.splitlines() if line.startswith("[chief]")]
    assert not any("Data " in line or "Starting /" in line for line in chief)
    for worker in ("tuner0", "tuner1"):
        assert re.search(rf"\[{worker}\] .*Worker {worker} finished: the oracle has no more "
                         r"trials \(this worker ran trial_", out)
    assert "[sweep] the chief exited with 0" in out
    # Every trial in TensorBoard's HParams, under <experiment>/<sweep>/trial_<n>.
    from tests.test_tuning import _hparams_sessions
    assert sorted(_hparams_sessions(t / "logs")[0][0] for t in trials) == [
        f"d1/{t.name} (mnist_lenet)" for t in trials]
    # A worker for the finished sweep is told so.
    late = subprocess.run([sys.executable, str(ROOT / "launch.py"),
                           *_sweep_args(data, tmp_path, "d1")], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env={
                              **os.environ, "KERASTUNER_TUNER_ID": "tuner5",
                              "KERASTUNER_ORACLE_IP": "127.0.0.1",
                              "KERASTUNER_ORACLE_PORT": str(free_port())})
    assert late.returncode == 1
    assert "finished already" in late.stderr.strip().splitlines()[-1]


def _pid_of(output_path: pathlib.Path, tuner_id: str, after: int = 0) -> int:
    pids = re.findall(rf"\[sweep\] {tuner_id} pid (\d+)", output_path.read_text())
    return int(pids[after]) if len(pids) > after else 0


def _worker_of(trial):
    try:
        return json.loads((trial / "config.json").read_text())["trial"]["worker"]
    except (OSError, ValueError, KeyError):
        return None


@pytest.mark.slow
def test_a_worker_killed_in_a_trial_is_restarted_and_resumes_it(data, tmp_path):
    log = tmp_path / "sweep.log"
    sweep_dir = tmp_path / "mnist_lenet" / "k1"
    epochs = 12
    with open(log, "w") as out:
        helper = subprocess.Popen([sys.executable, "-u", "-m", "common.distribute.local_sweep",
                                   "--workers=2", "--",
                                   *_sweep_args(data, tmp_path, "k1", trials=3, epochs=epochs)],
                                  cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 300
        worker = None
        while time.monotonic() < deadline and worker is None:  # a trial two epochs in
            for trial in _trials(sweep_dir):
                if len(history_epochs(trial)) >= 2 and not (trial / "metrics.json").exists():
                    worker = _worker_of(trial)
                    break
            time.sleep(0.2)
        assert worker is not None, _clean(log.read_text())[-3000:]
        os.kill(_pid_of(log, worker), signal.SIGKILL)
        # What the kill interrupted: that worker's trials without metrics.json.
        interrupted = [t for t in _trials(sweep_dir)
                       if _worker_of(t) == worker and not (t / "metrics.json").exists()]
        helper.wait(timeout=600)
    finally:
        if helper.poll() is None:
            helper.kill()
    text = log.read_text()
    assert helper.returncode == 0, _clean(text)[-4000:]
    assert f"[sweep] {worker} was killed (SIGKILL); starting it again" in text
    assert len(_trials(sweep_dir)) == 3
    assert interrupted, "the kill fell between two trials"
    for trial in interrupted:  # resumed where it stopped, every epoch once
        metrics = json.loads((trial / "metrics.json").read_text())
        assert metrics["status"] == "completed" and metrics["epochs"] == epochs
        assert history_epochs(trial) == list(range(epochs))
        assert re.search(rf"\[{worker}\] .*Resuming {re.escape(str(trial))}", text)
    state = json.loads((sweep_dir / "tuner" / "oracle.json").read_text())
    assert sorted(state["end_order"]) == ["0", "1", "2"]


def _start(args, tuner_id, port, log):
    env = {**os.environ, "KERASTUNER_TUNER_ID": tuner_id, "KERASTUNER_ORACLE_IP": "127.0.0.1",
           "KERASTUNER_ORACLE_PORT": str(port)}
    return subprocess.Popen([sys.executable, "-u", str(ROOT / "launch.py"), *args], cwd=ROOT,
                            env=env, stdout=log, stderr=subprocess.STDOUT)


@pytest.mark.slow
def test_a_killed_chief_is_resumed_by_its_command_and_no_trial_runs_twice(data, tmp_path):
    port = free_port()
    args = _sweep_args(data, tmp_path, "c1", trials=4, epochs=2)
    sweep_dir = tmp_path / "mnist_lenet" / "c1"
    logs = {name: open(tmp_path / f"{name}.log", "w") for name in ("chief", "chief2", "tuner0")}
    worker = chief = None
    try:
        chief = _start(args, "chief", port, logs["chief"])
        worker = _start(args, "tuner0", port, logs["tuner0"])
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and len(list(sweep_dir.glob("trial_*/metrics.json"))) < 1:
            time.sleep(0.5)
        chief.send_signal(signal.SIGKILL)
        chief.wait()
        time.sleep(3)  # the worker goes on with its trial, the oracle gone
        chief = _start(args, "chief", port, logs["chief2"])
        assert chief.wait(timeout=600) == 0, (tmp_path / "chief2.log").read_text()[-3000:]
        assert worker.wait(timeout=120) == 0, (tmp_path / "tuner0.log").read_text()[-3000:]
    finally:
        for process in (chief, worker):
            if process is not None and process.poll() is None:
                process.kill()
        for log in logs.values():
            log.close()
    trials = _trials(sweep_dir)
    assert len(trials) == 4 and all((t / "metrics.json").exists() for t in trials)
    state = json.loads((sweep_dir / "tuner" / "oracle.json").read_text())
    assert sorted(state["end_order"]) == ["0", "1", "2", "3"]  # each ended once
    worker_log = (tmp_path / "tuner0.log").read_text()
    for trial in trials:  # each trained once: one "Starting" line, no "Resuming"
        assert worker_log.count(f"Starting {trial} ") == 1, _clean(worker_log)[-3000:]
    assert json.loads((sweep_dir / "best_hparams.json").read_text())["trials_completed"] == 4


@pytest.mark.slow
def test_a_second_chief_other_settings_and_a_lost_oracle_are_one_line(data, tmp_path):
    port = free_port()
    args = _sweep_args(data, tmp_path, "s1", trials=2)
    sweep_dir = tmp_path / "mnist_lenet" / "s1"
    env = {**os.environ, "KERASTUNER_ORACLE_IP": "127.0.0.1",
           "KERASTUNER_ORACLE_PORT": str(port)}

    def launch(tuner_id, *extra, run_args=args):
        result = subprocess.run([sys.executable, str(ROOT / "launch.py"), *run_args, *extra],
                                cwd=ROOT, capture_output=True, text=True, timeout=180,
                                env={**env, "KERASTUNER_TUNER_ID": tuner_id})
        assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
        return result.stderr.strip().splitlines()[-1]

    with open(tmp_path / "chief.log", "w") as log:
        chief = _start(args, "chief", port, log)
    try:
        deadline = time.monotonic() + 120
        while not (sweep_dir / "sweep.json").exists() and time.monotonic() < deadline:
            time.sleep(0.5)
        line = launch("chief")
        assert "is in use by" in line and "a sweep has one chief" in line
        line = launch("tuner0", "--max_trials=3")
        assert line.startswith("launch.py: error: worker tuner0 was started with other "
                               "settings than the sweep's chief (settings.max_trials: chief 2, "
                               "this worker 3)")
    finally:
        chief.kill()
        chief.wait()
    # The chief gone: a worker with the right settings says so after the timeout.
    line = launch("tuner0", "--cluster_timeout=5")
    assert line.startswith(f"launch.py: error: worker tuner0 lost the sweep's oracle at "
                           f"127.0.0.1:{port} (") and "--cluster_timeout" in line
    # No chief ever: the worker waits --cluster_timeout for one, then says so.
    line = launch("tuner1", "--cluster_timeout=3",
                  run_args=_sweep_args(data, tmp_path, "never", trials=2))
    assert line == (f"launch.py: error: no chief started sweep {tmp_path}/mnist_lenet/never "
                    f"within 3 s (--cluster_timeout; its oracle would be at 127.0.0.1:{port}): "
                    "start the same command with KERASTUNER_TUNER_ID=chief")


def test_a_chiefs_oracle_ends_each_trial_once_and_a_real_result_wins(tmp_path):
    import keras_tuner as kt
    from common.modes import tune
    space = kt.HyperParameters()
    space.Float("learning_rate", 1e-4, 1e-2)
    oracle = kt.oracles.RandomSearchOracle(objective=kt.Objective("val_accuracy", "max"),
                                           max_trials=4, hyperparameters=space)
    oracle._set_project_dir(str(tmp_path), "tuner")
    tune._end_each_trial_once(oracle)
    first = oracle.create_trial("tuner0")
    oracle._retry_queue.append(first.trial_id)  # as a restarted chief queues it
    stand_in = kt.engine.trial.Trial(oracle.get_space(), first.trial_id,
                                     kt.engine.trial.TrialStatus.FAILED)
    oracle.end_trial(stand_in)
    assert first.trial_id not in oracle._retry_queue
    assert oracle.trials[first.trial_id].status == "FAILED"
    oracle.update_trial(first.trial_id, {"val_accuracy": 0.9})
    done = oracle.trials[first.trial_id]
    done.status = kt.engine.trial.TrialStatus.COMPLETED
    oracle.end_trial(done)  # the worker that really ran it reports
    assert oracle.trials[first.trial_id].status == "COMPLETED"
    assert oracle.end_order.count(first.trial_id) == 1
    oracle.end_trial(done)  # reported a second time: ignored
    assert oracle.end_order.count(first.trial_id) == 1


@pytest.mark.parametrize("tuner_id, localid, bound, expected", [
    ("chief", 0, None, ()),               # the oracle trains nothing
    ("tuner0", 1, None, (2, 3)),          # its share of the node's 6 GPUs: 3 tasks, 2 each
    ("tuner1", 2, None, (4, 5)),
    ("tuner0", 1, "2", (0, 1)),           # Slurm bound 2 GPUs to the task: all it sees
])
def test_slurm_sweep_workers_take_their_share_of_the_gpus(monkeypatch, tuner_id, localid,
                                                         bound, expected):
    import tensorflow as tf
    visible = 6 if bound is None else 2
    fake = [f"GPU:{i}" for i in range(visible)]
    chosen_devices = []
    monkeypatch.setattr(tf.config, "list_physical_devices", lambda kind: fake)
    monkeypatch.setattr(tf.config, "set_visible_devices",
                        lambda devices, kind: chosen_devices.append(list(devices)))
    for name in list(os.environ):
        if name.startswith("SLURM"):
            monkeypatch.delenv(name)
    env = _env(SLURM_JOB_ID=5, SLURM_STEP_ID=0, SLURM_PROCID=localid, SLURM_LOCALID=localid,
               SLURM_STEP_NUM_TASKS=3, SLURM_NTASKS=3, SLURM_STEP_NODELIST="gpu1",
               SLURM_STEP_TASKS_PER_NODE="3", SLURMD_NODENAME="gpu1",
               **({"SLURM_GPUS_ON_NODE": 6} if bound else {}))
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    role = sweep_cluster.SweepRole(tuner_id, "gpu1", 20000, "slurm")
    assert sweep_cluster.assign_gpus(role) == expected
    if len(expected) < visible:
        assert chosen_devices == [[fake[i] for i in expected]]
    else:
        assert chosen_devices == []
