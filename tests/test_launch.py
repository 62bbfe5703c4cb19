"""launch.py as a user runs it: a subprocess, flags, exit codes, stderr."""

import pathlib
import subprocess
import sys

import pytest

from common.errors import system_reason
from tests.fixtures import kill_when, history_epochs, write_idx_dataset

ROOT = pathlib.Path(__file__).resolve().parent.parent


def launch(*args, timeout=300):
    return subprocess.run([sys.executable, str(ROOT / "launch.py"), *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def _assert_one_line_error(result, *needles):
    """A user mistake: non-zero exit and exactly one line on stderr, ours."""
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("launch.py: error:"), result.stderr
    for needle in needles:
        assert needle in lines[0]


@pytest.fixture(scope="module")
def idx_dir(tmp_path_factory):
    return write_idx_dataset(tmp_path_factory.mktemp("idx"), num_train=300, num_test=60)


@pytest.mark.parametrize("args, needles", [
    (["--experiment=mnist_lenat"], ["mnist_lenat", "mnist_lenet"]),
    (["--experiment=mnist_lenet", "--strategy=horovod"], ["horovod", "mirrored"]),
    (["--experiment=mnist_lenet", "--hparams=dropot=0.5"], ["'dropot'", "dropout"]),
    (["--experiment=mnist_lenet", "--hparams=learning_rate=fast"], ["'fast'", "learning_rate"]),
    (["--experiment=mnist_lenet", "--strategy=mirrored", "--num_cpu_devices=2",
      "--batch_size=33"], ["33", "2 replicas"]),
    (["--experiment=mnist_lenet", "--data_dir=/no/such/folder"], ["/no/such/folder"]),
    (["--experiment=mnist_lenet", "--strategy=tpu"], ["no TPU found"]),
    (["--experiment=mnist_lenet", "--strategy=one_device", "--device=gpu"], ["gpu", "0 GPU"]),
    (["--experiment=mnist_lenet", "--hparams=dropout=0.1,dropout=0.3"], ["'dropout' twice"]),
    (["--experiment=mnist_lenet", "--run_name=../other/run"], ["../other/run", "separator"]),
])
def test_user_mistakes_are_one_line(tmp_path, args, needles):
    results_dir = tmp_path / "results"
    result = launch(*args, f"--results_dir={results_dir}")
    _assert_one_line_error(result, *needles)
    assert not list(results_dir.glob("*/*/metrics.json"))


def test_corrupt_file_is_one_line_and_no_run_is_reported(tmp_path):
    folder = write_idx_dataset(tmp_path / "idx", num_train=100, num_test=20)
    path = folder / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:50])
    result = launch("--experiment=mnist_lenet", f"--data_dir={folder}",
                    f"--results_dir={tmp_path / 'results'}")
    _assert_one_line_error(result, "t10k-images-idx3-ubyte.gz")
    assert not list((tmp_path / "results").glob("*/*/metrics.json"))



@pytest.mark.slow
@pytest.mark.parametrize("budget", ["auto", "0"])  # cached in memory; streamed from disk
def test_killed_run_resumes_where_it_stopped(tmp_path, budget):
    folder = write_idx_dataset(tmp_path / "idx", num_train=2000, num_test=100)
    epochs = 12
    args = [sys.executable, str(ROOT / "launch.py"), "--experiment=mnist_lenet",
            f"--data_dir={folder}", f"--results_dir={tmp_path / 'results'}",
            "--run_name=resume", f"--epochs={epochs}", "--batch_size=16", "--verbose=2",
            f"--data_memory_budget={budget}"]
    run_dir = tmp_path / "results" / "mnist_lenet" / "resume"
    process = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    kill_when(process, lambda: bool(history_epochs(run_dir)))
    done_before = history_epochs(run_dir)
    assert done_before and len(done_before) < epochs
    assert not (run_dir / "metrics.json").exists()

    resumed = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    output = resumed.stdout + resumed.stderr
    assert "Resuming run" in output
    assert ("streamed from" in output) == (budget == "0")
    first_epoch = int(output.split("Epoch ")[1].split("/")[0])
    assert first_epoch == len(done_before) + 1  # Keras counts from 1
    assert "Epoch 1/" not in output  # no epoch was redone
    rows = history_epochs(run_dir)
    assert rows == list(range(epochs))  # each epoch exactly once
    assert (run_dir / "metrics.json").exists()
    # TensorBoard has every epoch history.csv has, the one before the kill too.
    for folder in ("train", "validation"):
        assert _tensorboard_steps(run_dir / "logs" / folder, "epoch_loss") == set(rows)


def _tensorboard_steps(folder, tag):
    import tensorflow as tf
    steps = set()
    for path in folder.glob("events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            steps.update(event.step for value in event.summary.value if value.tag == tag)
    return steps


@pytest.mark.parametrize("message, expected", [
    # TensorFlow's checkpoint writer on a full disk (seen on a 1 MiB tmpfs).
    ("{{function_node __wrapped__SaveV2_dtypes_37_device_/job:localhost/replica:0/task:0/"
     "device:CPU:0}} /r/backup/ckpt-1_temp/part-00000-of-00001.data-00000-of-00001"
     ".tempstate9720927955733013113; No space left on device [Op:SaveV2]",
     "No space left on device: /r/backup/ckpt-1_temp/part-00000-of-00001.data-00000-of-00001"),
    ("[Errno 28] No space left on device: '/p/q'", "No space left on device: /p/q"),
    ("/my results/run/history.csv; No space left on device",
     "No space left on device: /my results/run/history.csv"),
    ("Failed to create a directory: /r/x; Read-only file system", "Read-only file system: /r/x"),
    ("Permission denied", "Permission denied"),
    ("Read less bytes than requested", ""),
])
def test_file_system_errors_become_one_line_naming_the_file(message, expected):
    assert system_reason(RuntimeError(message)) == expected
