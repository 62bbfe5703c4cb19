"""Run state is safe: one process per run, names inside results/, values
checked before any folder exists, damaged state handled, bugs reported."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

from common.config import resolve
from common.config.options import RunOptions
from common.errors import UserError
from common.modes import dispatch
from common.runs import files
from common.runs.lock import Lock
from tests.fixtures import history_epochs, kill_when, write_idx_dataset

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _launch_args(*args):
    return [sys.executable, str(ROOT / "launch.py"), *args]


def _launch(*args, timeout=600, env=None):
    return subprocess.run(_launch_args(*args), cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=env)


def _one_line(result, *needles):
    """Failed with one error line (the run's log lines may come before it)."""
    assert result.returncode != 0 and "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("launch.py")]
    assert len(lines) == 1 and lines[0].startswith("launch.py: error:"), result.stderr[-3000:]
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def idx_dir(tmp_path_factory):
    return write_idx_dataset(tmp_path_factory.mktemp("idx"), num_train=1200, num_test=100)


# --- one owner per run ------------------------------------------------------

def test_a_second_process_on_a_running_run_is_refused_at_once(tmp_path, idx_dir):
    args = _launch_args("--experiment=mnist_lenet", f"--data_dir={idx_dir}", "--epochs=40",
                        "--batch_size=16", f"--results_dir={tmp_path}", "--run_name=busy",
                        "--verbose=0")
    run_dir = tmp_path / "mnist_lenet" / "busy"
    first = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not (run_dir / "config.json").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        second = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=120)
        line = _one_line(second, "is in use by pid", str(first.pid))
        assert str(run_dir) in line
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    # The owner died: its lock went with it, so the same command resumes.
    assert Lock(run_dir, "run").acquire().release() is None


def test_a_sweep_has_one_owner(tmp_path):
    sweep = tmp_path / "mnist_lenet" / "s"
    sweep.mkdir(parents=True)
    held = Lock(sweep, "sweep").acquire()
    try:
        with pytest.raises(UserError, match=f"sweep {sweep} is in use by pid {os.getpid()}"):
            dispatch.run(RunOptions(experiment="mnist_lenet", mode="tune", tuner="random",
                                  sweep_name="s", results_dir=str(tmp_path)))
    finally:
        held.release()


# --- names stay inside results/ --------------------------------------------

@pytest.mark.parametrize("mode, flag, name", [
    ("train", "run_name", "../other_exp/run"), ("eval", "run_name", "/abs/dir"),
    ("eval", "run_name", ".."), ("tune", "sweep_name", ".."), ("predict", "run_name", "a/b"),
    ("train", "run_name", "x" * 300), ("train", "run_name", "tab\there"),
    ("export", "run_name", ""),
])
def test_names_that_leave_their_folder_are_refused_before_anything_is_written(
        tmp_path, mode, flag, name):
    options = RunOptions(experiment="mnist_lenet", mode=mode, results_dir=str(tmp_path / "r"),
                         **{flag: name})
    with pytest.raises(UserError, match=f"--{flag}"):
        dispatch.run(options)
    assert not (tmp_path / "r").exists()


# --- values checked before any work -----------------------------------------

@pytest.mark.parametrize("experiment, hparams, needle", [
    ("mnist_lenet", ("learning_rate=-1",), "'learning_rate'"),
    ("mnist_lenet", ("learning_rate=0",), "'learning_rate'"),
    ("mnist_lenet", ("learning_rate=nan",), "finite"),
    ("mnist_lenet", ("learning_rate=inf",), "finite"),
    ("mnist_lenet", ("dropout=1.5",), "'dropout'"),
    ("mnist_lenet", ("dropout=-0.2",), "'dropout'"),
    ("mnist_lenet", ("dataset=",), "dataset"),
    ("mnist_lenet", ("validation_fraction=0",), "'validation_fraction'"),
    ("cifar_vgg_transfer", ("head_units=-1",), "'head_units'"),
    ("cifar_vgg_transfer", ("input_size=0",), "'input_size'"),
    ("cifar_vgg_transfer", ("augment_pad=-3",), "'augment_pad'"),
    ("pruning_qat", ("pruning_begin_step=50", "pruning_end_step=10"),
     "pruning_end_step=10 must come after pruning_begin_step=50"),
    ("pruning_qat", ("latency_invocations=0",), "'latency_invocations'"),
    ("mnist_lenet", ("dropout=0.1", "dropout=0.3"), "'dropout' twice"),
])
def test_invalid_values_are_refused_before_any_folder_exists(tmp_path, idx_dir, experiment,
                                                             hparams, needle):
    with pytest.raises(UserError) as raised:
        dispatch.run(RunOptions(experiment=experiment, hparams=hparams, data_dir=str(idx_dir),
                              results_dir=str(tmp_path / "r"), weights="none"
                              if experiment == "cifar_vgg_transfer" else None))
    assert needle in str(raised.value) and "\n" not in str(raised.value)
    assert not (tmp_path / "r").exists()


def test_an_empty_test_split_is_refused_before_training(tmp_path):
    folder = write_idx_dataset(tmp_path / "idx", num_train=100, num_test=0)
    with pytest.raises(UserError, match="test split .* is empty"):
        dispatch.run(RunOptions(experiment="mnist_lenet", data_dir=str(folder), batch_size=16,
                              results_dir=str(tmp_path / "r")))
    assert not (tmp_path / "r").exists()


# --- file-system trouble ------------------------------------------------------

def test_a_results_path_that_is_a_file_is_one_line(tmp_path, idx_dir):
    (tmp_path / "results").write_text("not a folder")
    result = _launch("--experiment=mnist_lenet", f"--data_dir={idx_dir}", "--epochs=1",
                     f"--results_dir={tmp_path / 'results'}")
    _one_line(result, "cannot create the run folder", str(tmp_path / "results"))


@pytest.mark.slow
def test_a_backup_path_that_is_a_file_is_one_line_and_the_fix_resumes(tmp_path, idx_dir):
    args = ["--experiment=mnist_lenet", f"--data_dir={idx_dir}", "--epochs=1",
            "--batch_size=32", f"--results_dir={tmp_path}", "--run_name=b", "--verbose=0"]
    run_dir = tmp_path / "mnist_lenet" / "b"
    run_dir.mkdir(parents=True)
    (run_dir / "backup").write_text("in the way")
    _one_line(_launch(*args), "backup")
    (run_dir / "backup").unlink()
    fixed = _launch(*args)
    assert fixed.returncode == 0, fixed.stderr[-3000:]
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "completed"


# --- damaged resume state ---------------------------------------------------

@pytest.mark.slow
def test_damaged_resume_state_is_one_line_and_restart_starts_over(tmp_path, idx_dir):
    args = _launch_args("--experiment=mnist_lenet", f"--data_dir={idx_dir}", "--epochs=30",
                        "--batch_size=16", f"--results_dir={tmp_path}", "--run_name=d",
                        "--verbose=0", "--hparams=steps_per_execution=1")
    run_dir = tmp_path / "mnist_lenet" / "d"
    process = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    kill_when(process, lambda: len(history_epochs(run_dir)) >= 2)
    # A torn last line, as a kill in mid-write leaves it, is dropped and redone.
    history = run_dir / "history.csv"
    history.write_text(history.read_text() + "2,0.5,0.8")
    checkpoints = list((run_dir / "backup").rglob("*.data-*"))
    assert checkpoints
    for path in checkpoints:
        path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    damaged = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300)
    _one_line(damaged, "is damaged", "--restart")
    restarted = subprocess.run(args[:-2] + ["--epochs=2", "--restart",
                                            "--hparams=steps_per_execution=1"],
                               cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert restarted.returncode == 0, restarted.stderr[-3000:]
    assert history_epochs(run_dir) == [0, 1]
    assert json.loads((run_dir / "metrics.json").read_text())["epochs"] == 2


def test_a_deleted_backup_says_it_restarts(tmp_path, idx_dir, caplog):
    import logging
    caplog.set_level(logging.WARNING, logger="absl")
    run_dir = tmp_path / "mnist_lenet" / "gone"
    run_dir.mkdir(parents=True)
    options = RunOptions(experiment="mnist_lenet", data_dir=str(idx_dir), epochs=2,
                         batch_size=64, results_dir=str(tmp_path), run_name="gone", verbose=0)
    config = resolve.resolve_config(__import__("experiments").get("mnist_lenet"), options)
    files.write_json_atomic(run_dir / "config.json", {
        "hparams": config, "data": {"dataset": "mnist", "data_dir": str(idx_dir.resolve()),
                                    "source": str(idx_dir)}})
    files.write_history(run_dir, [{"epoch": 0, "loss": 1.0}])  # no backup beside it
    metrics = dispatch.run(options)
    assert [row["epoch"] for row in metrics["history"]] == [0, 1]
    assert any("no backup to resume from; restarting" in r.message for r in caplog.records)


def test_resuming_with_other_data_is_refused(tmp_path, idx_dir):
    other = write_idx_dataset(tmp_path / "other", num_train=1200, num_test=100, seed=3)
    run_dir = tmp_path / "r" / "mnist_lenet" / "x"
    run_dir.mkdir(parents=True)
    options = RunOptions(experiment="mnist_lenet", data_dir=str(idx_dir),
                         results_dir=str(tmp_path / "r"), run_name="x")
    config = resolve.resolve_config(__import__("experiments").get("mnist_lenet"), options)
    files.write_json_atomic(run_dir / "config.json", {
        "hparams": config, "data": {"dataset": "mnist", "data_dir": str(idx_dir.resolve()),
                                    "source": str(idx_dir)}})
    with pytest.raises(UserError, match="started on other data"):
        dispatch.run(RunOptions(experiment="mnist_lenet", data_dir=str(other),
                              results_dir=str(tmp_path / "r"), run_name="x"))


# --- eval and init_from on damaged or unfinished runs ----------------------------

def test_eval_of_an_unfinished_or_damaged_run_is_one_line(tmp_path, idx_dir):
    run_dir = tmp_path / "mnist_lenet" / "half"
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text("{}")
    with pytest.raises(UserError, match="is not finished"):
        dispatch.run(RunOptions(experiment="mnist_lenet", mode="eval", run_name="half",
                              results_dir=str(tmp_path), data_dir=str(idx_dir)))
    assert not (run_dir / "eval.json").exists()
    with pytest.raises(UserError, match="config.json: no hparams object"):
        (run_dir / "metrics.json").write_text('{"status": "completed"}')
        dispatch.run(RunOptions(experiment="mnist_lenet", mode="eval", run_name="half",
                              results_dir=str(tmp_path), data_dir=str(idx_dir)))
    (run_dir / "config.json").write_text('{"hparams": {"dataset": "mnist"}}')
    (run_dir / "metrics.json").write_text('{"status": "completed", "models": '
                                          '[{"name": "model", "format": "keras", '
                                          '"path": "model/model.keras"}]}')
    with pytest.raises(UserError, match="which is missing"):
        dispatch.run(RunOptions(experiment="mnist_lenet", mode="eval", run_name="half",
                              results_dir=str(tmp_path), data_dir=str(idx_dir)))
    (run_dir / "model").mkdir()
    (run_dir / "model" / "model.keras").write_bytes(b"not a model")
    with pytest.raises(UserError, match="model.keras is declared as .keras but is not a "
                                        ".keras zip file; refusing to load it"):
        dispatch.run(RunOptions(experiment="mnist_lenet", mode="eval", run_name="half",
                              results_dir=str(tmp_path), data_dir=str(idx_dir)))


# --- interrupts and bugs ----------------------------------------------------

def test_ctrl_c_during_start_up_is_one_line_and_130(tmp_path):
    process = subprocess.Popen(_launch_args("--experiment=mnist_lenet",
                                            f"--results_dir={tmp_path}"), cwd=ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(1.0)  # TensorFlow is still importing
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130
    assert stderr.strip().splitlines() == [
        "launch.py: interrupted; the same command (with the run's --run_name) resumes it"]


def test_a_bug_is_one_line_with_the_traceback_in_a_log(tmp_path):
    folder = tmp_path / "exps" / "buggy"
    folder.mkdir(parents=True)
    (folder / "__init__.py").write_text(
        "def get_config():\n    return {}\n\n\n"
        "def build_model(config, image_shape, num_classes):\n"
        "    return {}['no_such_key']\n")
    env = dict(os.environ, EXPERIMENTS_PATH=str(tmp_path / "exps"))
    data = write_idx_dataset(tmp_path / "idx", num_train=100, num_test=20)
    result = _launch("--experiment=buggy", f"--data_dir={data}",
                     f"--results_dir={tmp_path / 'r'}", env=env)
    assert result.returncode == 2
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("launch.py: error: unexpected KeyError: 'no_such_key'")
    log = pathlib.Path(line.split("traceback in ")[1].split(";")[0])
    assert log.parent == tmp_path / "r" / "crashes"
    assert "Traceback" in log.read_text() and "build_model" in log.read_text()
    assert "Traceback" not in result.stderr


@pytest.fixture
def tiny_disk(tmp_path):
    """A 600 KiB tmpfs (root and mount needed; skipped with the reason otherwise)."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=600k", "tmpfs", str(mount_point)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip() or done.returncode}")
    yield mount_point
    subprocess.run(["umount", str(mount_point)], capture_output=True)


@pytest.mark.slow
def test_a_full_disk_is_one_line_and_the_run_resumes_once_space_is_freed(tiny_disk, idx_dir):
    args = ["--experiment=mnist_lenet", f"--data_dir={idx_dir}", "--epochs=2",
            "--batch_size=32", f"--results_dir={tiny_disk / 'results'}", "--run_name=full",
            "--verbose=0"]
    full = _launch(*args)
    line = _one_line(full)
    assert "No space left on device" in line, line
    grown = subprocess.run(["mount", "-o", "remount,size=64m", str(tiny_disk)],
                           capture_output=True, text=True)
    assert grown.returncode == 0, grown.stderr
    again = _launch(*args)
    assert again.returncode == 0, again.stderr[-3000:]
    metrics = json.loads((tiny_disk / "results/mnist_lenet/full/metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["epochs"] == 2


def _backup_tree(run_dir: pathlib.Path) -> pathlib.Path:
    """A stage's backup as a two-worker run leaves it mid-way: the chief's
    checkpoint, worker 1's temporary copy still being written, and the
    chief's epoch log."""
    stage_dir = run_dir / "backup" / "train"
    for path in ("keras/chief/checkpoint", "keras/workertemp_1/ckpt-20_temp/part-00000",
                 "epoch_logs.json"):
        (stage_dir / path).parent.mkdir(parents=True, exist_ok=True)
        (stage_dir / path).write_text("x")
    return stage_dir


@pytest.mark.parametrize("chief", [True, False])
def test_a_finished_stage_drops_only_its_own_backup(tmp_path, monkeypatch, chief):
    import tensorflow as tf
    from common.distribute import strategy as strategy_lib
    from common.training import stage_runner
    from common.training.stages import Stage
    run_dir = tmp_path / "run"
    stage_dir = _backup_tree(run_dir)
    write_dir = run_dir if chief else run_dir / "workertemp_1"
    own = _backup_tree(write_dir) if not chief else stage_dir
    monkeypatch.setattr(strategy_lib, "is_chief", lambda strategy: chief)
    stages = [Stage(name="train", epochs=1, learning_rate=0.1)]
    stage_run = stage_runner.StageRunner(
        stages=stages, config={}, strategy=tf.distribute.get_strategy(), steps_per_epoch=1,
        global_batch=1, fit=None, validator=None)
    stage_run.attach(run_dir, write_dir)
    stage_run.drop_backup(stages[0])
    # Another worker's copy is never pulled from under its last save.
    assert (stage_dir / "keras/workertemp_1/ckpt-20_temp/part-00000").exists()
    assert (stage_dir / "keras/chief/checkpoint").exists() != chief  # the chief's own
    assert not (own / "epoch_logs.json").exists()


def test_a_run_folder_whose_config_cannot_be_written_is_released(tmp_path, monkeypatch):
    import tensorflow as tf

    from common.runs import folder as folder_lib

    def broken(*args, **kwargs):
        raise RuntimeError("summary writer failed")

    monkeypatch.setattr(folder_lib, "write_hparams", broken)
    options = RunOptions(experiment="mnist_lenet", results_dir=str(tmp_path), run_name="r")
    with pytest.raises(RuntimeError, match="summary writer failed"):
        folder_lib.RunFolder.claim("mnist_lenet", options, {"dataset": "mnist", "batch_size": 8},
                                   tf.distribute.get_strategy(), {"dataset": "mnist"})
    # Not left locked by this process: another claim can take the folder.
    lock = Lock(tmp_path / "mnist_lenet" / "r", "run").acquire()
    lock.release()


def test_a_resume_under_another_strategy_replica_count_or_seed_is_refused(tmp_path):
    from common.runs import folder
    how = {"strategy": "DefaultStrategy", "num_replicas": 1, "seed": 0}
    path, _, lock = folder.claim_run_dir(tmp_path, "mix", {"a": 1}, {"d": 1}, how=how)
    files.write_json_atomic(path / "config.json", {
        "hparams": {"a": 1}, "data": {"d": 1}, "strategy": "DefaultStrategy",
        "num_replicas": 1, "flags": {"seed": 0}})
    lock.release()
    for change, named in (({"strategy": "MirroredStrategy", "num_replicas": 2},
                           "strategy 'DefaultStrategy', num_replicas 1; this command has "
                           "strategy 'MirroredStrategy', num_replicas 2"),
                          ({"seed": 3}, "seed 0; this command has seed 3")):
        with pytest.raises(UserError) as error:
            folder.claim_run_dir(tmp_path, "mix", {"a": 1}, {"d": 1}, how={**how, **change})
        assert named in str(error.value) and "\n" not in str(error.value)
    _, resuming, lock = folder.claim_run_dir(tmp_path, "mix", {"a": 1}, {"d": 1}, how=how)
    assert resuming
    lock.release()


def test_a_default_run_name_says_what_the_run_is(tmp_path):
    from common.runs import folder
    options = RunOptions(experiment="mnist_lenet", epochs=3, hparams=("learning_rate=0.01",))
    label = folder.default_label(options, {"dataset": "fashion_mnist"})
    assert label == "fashion_mnist-epochs=3-learning_rate=0.01"
    path, resuming, lock = folder.claim_run_dir(tmp_path, None, {}, {}, label=label)
    lock.release()
    assert not resuming
    assert path.name.startswith("fashion_mnist-epochs=3-learning_rate=0.01-2")
    files.check_name("run_name", path.name)
    odd = folder.default_label(RunOptions(experiment="x", dataset="image_folder",
                                          data_dir="/data/my photos", hparams=("a=b/c",) * 20),
                               {"dataset": "image_folder"})
    assert odd.startswith("my_photos-a=b_c-") and len(odd) <= folder.LABEL_LENGTH


def test_a_missing_run_lists_the_finished_ones(tmp_path):
    from common.runs import saved
    for name in ("older", "newer", "unfinished"):
        (tmp_path / "mnist_lenet" / name).mkdir(parents=True)
    for name, when in (("older", 1_000_000), ("newer", 2_000_000)):
        path = tmp_path / "mnist_lenet" / name / "metrics.json"
        path.write_text("{}")
        os.utime(tmp_path / "mnist_lenet" / name, (when, when))
    with pytest.raises(UserError) as error:
        saved.find_finished(str(tmp_path), "mnist_lenet", "fm")
    assert str(error.value) == (f"no run {tmp_path}/mnist_lenet/fm; finished runs there, "
                                "newest first: newer, older")
    with pytest.raises(UserError, match="holds no finished run"):
        saved.find_finished(str(tmp_path), "cifar_cnn", "fm")
