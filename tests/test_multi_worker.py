"""MultiWorkerMirroredStrategy: two worker processes on localhost."""

import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import time

import pytest

from tests.fixtures import history_epochs, write_idx_dataset

ROOT = pathlib.Path(__file__).resolve().parent.parent


def cluster(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "common.distribute.local_cluster", "--workers=2",
                           "--", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def idx_dir(tmp_path_factory):
    return write_idx_dataset(tmp_path_factory.mktemp("idx"), num_train=400, num_test=100)


@pytest.mark.slow
def test_two_workers_train_one_run_with_identical_weights(tmp_path, idx_dir):
    result = cluster("--experiment=mnist_lenet", f"--data_dir={idx_dir}",
                     f"--results_dir={tmp_path / 'results'}", "--epochs=2",
                     "--batch_size=32", "--run_name=mw", "--verbose=1",
                     "--hparams=steps_per_execution=2")
    assert result.returncode == 0, result.stdout[-3000:]
    # The progress bar shows the global figures, the same on both workers,
    # not the workers' already-reduced values added up again (accuracy 1.6).
    progress = re.findall(r"\[worker (\d)\] +(\d+)/\d+ \[.*?accuracy: ([\d.]+)",
                          result.stdout.replace("\r", "\n"))
    assert len(progress) >= 8
    assert all(float(accuracy) <= 1.0 for _, _, accuracy in progress)
    by_step = {}
    for worker, step, accuracy in progress:
        by_step.setdefault(step, {})[worker] = accuracy
    assert all(len(set(seen.values())) == 1 for seen in by_step.values() if len(seen) == 2)
    checksums = dict(re.findall(r"\[worker (\d)\] .*Final weights checksum: (\w+)",
                                result.stdout))
    assert set(checksums) == {"0", "1"}
    assert checksums["0"] == checksums["1"]  # all-reduce kept the replicas equal
    run_dir = tmp_path / "results" / "mnist_lenet" / "mw"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["num_replicas"] == 2
    assert metrics["strategy"] == "MultiWorkerMirroredStrategy"
    assert metrics["weights_checksum"] == checksums["0"]
    assert "[worker 1]" in result.stdout and "Worker 1 is not the chief" in result.stdout
    # Only the chief's files remain: no worker temp folders, one metrics.json.
    assert not list(run_dir.rglob("workertemp_*"))
    assert [p.relative_to(run_dir) for p in run_dir.rglob("metrics.json")] == [
        pathlib.Path("metrics.json")]
    assert len(metrics["history"]) == 2
    # Each worker read its own shards, about half of the bytes, and the test
    # split was still scored exactly once over both.
    shares = dict(re.findall(r"\[worker (\d)\] .*worker \d of 2 reads .* \((\d+)%; by file\)",
                             result.stdout))
    assert set(shares) == {"0", "1"} and all(45 <= int(v) <= 55 for v in shares.values()), (
        shares)
    assert metrics["num_test_examples"] == 100



@pytest.mark.slow
def test_a_killed_worker_stops_the_job_and_the_same_command_resumes(tmp_path):
    folder = write_idx_dataset(tmp_path / "idx", num_train=1600, num_test=100)
    epochs = 20
    args = [sys.executable, "-u", "-m", "common.distribute.local_cluster", "--workers=2", "--",
            "--experiment=mnist_lenet", f"--data_dir={folder}",
            f"--results_dir={tmp_path / 'results'}", f"--epochs={epochs}",
            "--batch_size=32", "--run_name=ft", "--verbose=2"]
    run_dir = tmp_path / "results" / "mnist_lenet" / "ft"
    # The helper's output goes to a file, not a pipe: an undrained pipe fills
    # up and blocks the workers mid-training, which is not what is tested.
    log_path = tmp_path / "helper.log"
    with open(log_path, "w") as log:
        helper = subprocess.Popen(args, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    worker_pids = {}
    deadline = time.monotonic() + 240
    while (len(worker_pids) < 2 or not history_epochs(run_dir)) and time.monotonic() < deadline:
        if helper.poll() is not None:
            pytest.fail("the job ended before a worker could be killed:\n"
                        + log_path.read_text()[-4000:])
        worker_pids = {int(i): int(pid) for i, pid in
                       re.findall(r"\[cluster\] worker (\d) pid (\d+)", log_path.read_text())}
        time.sleep(0.05)
    os.kill(worker_pids[1], signal.SIGKILL)
    killed_at = time.monotonic()
    helper.wait(timeout=120)
    output = log_path.read_text()
    assert helper.returncode != 0
    assert time.monotonic() - killed_at < 60  # stopped cleanly, no hang
    assert "worker 1 exited with -9; stopping the others" in output
    assert "--run_name=ft" in output
    done_before = history_epochs(run_dir)
    assert done_before and len(done_before) < epochs
    assert not (run_dir / "metrics.json").exists()

    resumed = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=400)
    assert resumed.returncode == 0, resumed.stdout[-3000:]
    assert "Resuming run" in resumed.stdout
    assert "[worker 0] Epoch 1/" not in resumed.stdout  # resumed, not restarted
    epochs_seen = history_epochs(run_dir)
    assert sorted(set(epochs_seen)) == list(range(epochs))
    assert len(epochs_seen) - len(set(epochs_seen)) <= 1  # at most the epoch cut short
    assert json.loads((run_dir / "metrics.json").read_text())["num_replicas"] == 2


def test_several_workers_need_a_shared_run_name(tmp_path):
    env = dict(os.environ, TF_CONFIG=json.dumps({
        "cluster": {"worker": ["127.0.0.1:1", "127.0.0.1:2"]},
        "task": {"type": "worker", "index": 0}}))
    result = subprocess.run([sys.executable, str(ROOT / "launch.py"),
                             "--experiment=mnist_lenet", "--strategy=multi_worker_mirrored",
                             f"--results_dir={tmp_path}"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "needs --run_name" in result.stderr


@pytest.mark.slow
def test_a_lone_worker_stops_after_cluster_timeout_naming_the_missing_one(tmp_path):
    from tests.fixtures import free_port
    ports = [free_port(), free_port()]
    env = dict(os.environ, TF_CONFIG=json.dumps({
        "cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
        "task": {"type": "worker", "index": 0}}))
    started = time.monotonic()
    result = subprocess.run([sys.executable, str(ROOT / "launch.py"),
                             "--experiment=mnist_lenet", "--strategy=multi_worker_mirrored",
                             "--run_name=lone", "--cluster_timeout=3",
                             f"--results_dir={tmp_path}"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert time.monotonic() - started < 60
    error = [line for line in result.stderr.splitlines() if line.startswith("launch.py")]
    assert len(error) == 1 and f"127.0.0.1:{ports[1]}" in error[0]
    assert "--cluster_timeout=3" in error[0]
    assert not (tmp_path / "mnist_lenet" / "lone").exists()


def test_local_cluster_without_launch_flags_is_one_line():
    result = subprocess.run([sys.executable, "-m", "common.distribute.local_cluster", "--workers=2"],
                            cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "pass launch.py's flags after --" in result.stderr


@pytest.mark.parametrize("given", [["--strategy=mirrored"], ["--strategy", "mirrored"], []])
def test_every_worker_gets_multi_worker_mirrored_whatever_strategy_was_given(given):
    from common.distribute.local_cluster import worker_args
    args, run_name = worker_args(["--experiment=mnist_lenet", *given, "--epochs=1"])
    assert args[:2] == ["--experiment=mnist_lenet", "--epochs=1"]
    assert args[2] == "--strategy=multi_worker_mirrored"
    assert args[3] == f"--run_name={run_name}" and run_name.startswith("cluster-")
    assert len(args) == 4  # no stray strategy name left behind
