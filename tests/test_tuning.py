"""Keras Tuner sweeps: trials as runs, HParams logs, resume, failures."""

import json
import pathlib
import subprocess
import sys

import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

import experiments
from common.config import hparams
from common.config.options import RunOptions
from common.errors import UserError
from common.modes import dispatch
from experiments.mnist_lenet.config import get_config
from tests.fixtures import kill_when, write_idx_dataset

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _options(tmp_path, **overrides):
    values = dict(experiment="mnist_lenet", mode="tune", results_dir=str(tmp_path / "results"),
                  verbose=0, sweep_name="s", data_dir=str(tmp_path / "tfds"))
    values.update(overrides)
    return RunOptions(**values)


def _has_hparams(folder: pathlib.Path) -> bool:
    for path in folder.glob("events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                if value.metadata.plugin_data.plugin_name == "hparams":
                    return True
    return False


def _trials(sweep_dir):
    return sorted((p for p in sweep_dir.glob("trial_*") if p.is_dir()),
                  key=lambda p: int(p.name.split("_")[1]))


def _hparams_sessions(folder: pathlib.Path) -> list:
    """(trial id, hyperparameter names) of every HParams session summary."""
    from tensorboard.plugins.hparams import plugin_data_pb2
    sessions = []
    for path in folder.glob("events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                if value.metadata.plugin_data.plugin_name != "hparams":
                    continue
                data = plugin_data_pb2.HParamsPluginData.FromString(
                    value.metadata.plugin_data.content)
                if data.HasField("session_start_info"):
                    info = data.session_start_info
                    sessions.append((info.group_name, set(info.hparams)))
    return sessions


@pytest.mark.slow
def test_random_sweep_writes_trials_hparams_and_best(tmp_path):
    (tmp_path / "tfds").mkdir()
    with tfds.testing.mock_data(num_examples=256):
        # A --run_name and --restart of the sweep's command do not reach its trials.
        best = dispatch.run(_options(tmp_path, tuner="random", max_trials=3, max_epochs=1,
                                     strategy="mirrored", run_name="ignored", restart=True))
    sweep_dir = tmp_path / "results" / "mnist_lenet" / "s"
    trials = _trials(sweep_dir)
    assert len(trials) == 3
    assert not (tmp_path / "results" / "mnist_lenet" / "ignored").exists()
    scores = {}
    for trial in trials:
        metrics = json.loads((trial / "metrics.json").read_text())
        assert metrics["num_replicas"] == 2 and metrics["epochs"] == 1
        assert _has_hparams(trial / "logs")
        # Trials skip the serving export; the best one is retrained for it.
        assert not (trial / "export").exists() and "exported" not in metrics
        config = json.loads((trial / "config.json").read_text())
        assert config["trial"] == {"sweep_dir": str(sweep_dir), "name": trial.name,
                                   "warm_start": None, "initial_epoch": 0,
                                   "worker": None}
        scores[trial.name] = metrics["history"][-1]["val_accuracy"]
    # No sweep-wide HParams configuration (it would hide every other run's
    # columns under --logdir results); each trial declares its own, under an
    # id that names the experiment and the sweep.
    assert not (sweep_dir / "logs").exists()
    assert [t.name for t in trials] == ["trial_1", "trial_2", "trial_3"]
    sessions = _hparams_sessions(trials[0] / "logs")
    assert sessions[0][0] == "s/trial_1 (mnist_lenet)"
    assert {"learning_rate", "batch_size", "dropout", "optimizer", "epochs"} <= sessions[0][1]
    on_disk = json.loads((sweep_dir / "best_hparams.json").read_text())
    assert on_disk == best
    # The sweep's one epoch is its budget, not a finding: the file says what
    # the trial trained, and the command trains the experiment's epochs.
    assert set(best["hparams"]) == {"learning_rate", "batch_size", "dropout"}
    assert best["found_at_epochs"] == 1
    assert best["epochs"] == hparams.defaults(get_config())["epochs"] == 10
    assert best["objective"]["value"] == pytest.approx(max(scores.values()))
    assert best["trials_completed"] == 3
    assert best["train_it_with"].endswith(f"--data_dir={tmp_path / 'tfds'} --results_dir="
                                          f"{tmp_path / 'results'} --hparams_file="
                                          f"{sweep_dir / 'best_hparams.json'} --epochs=10")
    # The first trial is the experiment's defaults: the baseline to beat.
    first = json.loads((trials[0] / "config.json").read_text())["hparams"]
    defaults = hparams.defaults(get_config())
    assert {k: first[k] for k in ("learning_rate", "batch_size", "dropout")} == {
        k: defaults[k] for k in ("learning_rate", "batch_size", "dropout")}
    others = [json.loads((t / "config.json").read_text())["hparams"] for t in trials[1:]]
    assert all(o["learning_rate"] != defaults["learning_rate"] for o in others)


@pytest.mark.slow
def test_bayesian_sweep(tmp_path):
    (tmp_path / "tfds").mkdir()
    with tfds.testing.mock_data(num_examples=256):
        best = dispatch.run(_options(tmp_path, tuner="bayesian", max_trials=3, max_epochs=1))
    assert best["trials_completed"] == 3
    assert len(_trials(tmp_path / "results" / "mnist_lenet" / "s")) == 3


@pytest.mark.slow
def test_hyperband_continues_trials_from_their_weights(tmp_path):
    (tmp_path / "tfds").mkdir()
    with tfds.testing.mock_data(num_examples=64):
        dispatch.run(_options(tmp_path, tuner="hyperband", max_epochs=2, hyperband_factor=2))
    sweep_dir = tmp_path / "results" / "mnist_lenet" / "s"
    continued = []
    for trial in _trials(sweep_dir):
        config = json.loads((trial / "config.json").read_text())
        metrics = json.loads((trial / "metrics.json").read_text())
        assert config["trial"]["name"] == trial.name
        assert config["flags"]["mode"] == "tune"  # the sweep's flags, as the user gave them
        if config["trial"]["warm_start"]:
            continued.append(trial)
            assert pathlib.Path(config["trial"]["warm_start"]).parent == sweep_dir
            first = config["trial"]["initial_epoch"]
            assert first >= 1
            assert [row["epoch"] for row in metrics["history"]][0] == first
    assert continued, "Hyperband continued no trial"
    assert (sweep_dir / "best_hparams.json").exists()


def test_sweep_whose_trials_all_fail_reports_the_first_failure(tmp_path, monkeypatch):
    def broken_model(config, image_shape, num_classes):
        raise ValueError(f"cannot build with dropout {config['dropout']}")

    monkeypatch.setattr(experiments.get("mnist_lenet"), "build_model", broken_model)
    (tmp_path / "tfds").mkdir()
    with tfds.testing.mock_data(num_examples=256):  # a batch of 128 fits: the model fails
        with pytest.raises(UserError, match=r"every trial of sweep s failed; first failure "
                                            r"\(trial_1\): ValueError: cannot build with "
                                            r"dropout 0.0 \(tracebacks in "):
            dispatch.run(_options(tmp_path, tuner="random", max_trials=2, max_epochs=1))
    sweep_dir = tmp_path / "results" / "mnist_lenet" / "s"
    assert not (sweep_dir / "best_hparams.json").exists()
    # Each failed trial left its traceback in its folder, not on the console.
    for trial in ("trial_1", "trial_2"):
        assert "ValueError: cannot build" in (sweep_dir / trial / "error.log").read_text()


def test_searched_name_cannot_also_be_fixed(tmp_path):
    with pytest.raises(UserError, match="--hparams fixes dropout"):
        dispatch.run(_options(tmp_path, tuner="random", hparams=("dropout=0.1",)))


def test_hyperband_refuses_a_multi_stage_experiment(tmp_path):
    with pytest.raises(UserError, match="Hyperband continues trials epoch by epoch"):
        dispatch.run(_options(tmp_path, experiment="pruning_qat", tuner="hyperband"))


def test_hparams_file_round_trip_and_explicit_hparams_win(tmp_path):
    folder = write_idx_dataset(tmp_path / "idx", num_train=200, num_test=40)
    path = tmp_path / "best_hparams.json"
    path.write_text(json.dumps({"hparams": {"learning_rate": 0.002, "batch_size": 32,
                                            "dropout": 0.2, "epochs": 1}}))
    dispatch.run(RunOptions(
        experiment="mnist_lenet", results_dir=str(tmp_path / "results"), verbose=0,
        data_dir=str(folder), run_name="a", hparams_file=str(path)))
    dispatch.run(RunOptions(
        experiment="mnist_lenet", results_dir=str(tmp_path / "results"), verbose=0,
        data_dir=str(folder), run_name="b", hparams_file=str(path),
        hparams=("dropout=0.1",)))
    a = json.loads((tmp_path / "results/mnist_lenet/a/config.json").read_text())["hparams"]
    b = json.loads((tmp_path / "results/mnist_lenet/b/config.json").read_text())["hparams"]
    assert (a["learning_rate"], a["batch_size"], a["dropout"], a["epochs"]) == (0.002, 32, 0.2, 1)
    assert b["dropout"] == 0.1 and b["learning_rate"] == 0.002


def test_hparams_file_with_unknown_name(tmp_path):
    path = tmp_path / "h.json"
    path.write_text(json.dumps({"learning_rat": 0.1}))
    with pytest.raises(UserError, match="'learning_rat'"):
        dispatch.run(RunOptions(experiment="mnist_lenet", hparams_file=str(path),
                                         results_dir=str(tmp_path / "results")))


def test_resumed_sweep_on_other_data_is_refused(tmp_path):
    (tmp_path / "tfds").mkdir()
    folder = write_idx_dataset(tmp_path / "idx", num_train=200, num_test=40)
    with tfds.testing.mock_data(num_examples=64):
        dispatch.run(_options(tmp_path, tuner="random", max_trials=1, max_epochs=1))
    with pytest.raises(UserError, match="started with other data"):
        dispatch.run(_options(tmp_path, tuner="random", max_trials=1, max_epochs=1,
                            data_dir=str(folder)))


def test_a_resume_with_other_settings_names_each_difference(tmp_path):
    """Was the whole recorded settings dict, leaving the user to find the
    difference."""
    from common.modes import tune
    settings = {"tuner": "random", "max_trials": 2, "max_epochs": 1, "objective": "val_loss"}
    data = {"dataset": "fashion_mnist", "data_dir": None}
    tune._check_same_sweep(tmp_path, {"settings": settings, "data": data})
    tune._check_same_sweep(tmp_path, {"settings": settings, "data": data})  # the same: resumes
    with pytest.raises(UserError) as error:
        tune._check_same_sweep(tmp_path, {"settings": {**settings, "max_trials": 3,
                                                       "max_epochs": 2}, "data": data})
    assert f"sweep {tmp_path} was started with other tuner settings (max_epochs: 1, this " \
           "command 2; max_trials: 2, this command 3); resume it with the same" in str(error.value)
    with pytest.raises(UserError, match=r"\(seed: None, this command None\)"):
        tune._check_same_sweep(tmp_path, {"settings": {**settings, "seed": None}, "data": data})


@pytest.mark.slow
def test_interrupted_sweep_resumes_without_repeating_trials(tmp_path):
    folder = write_idx_dataset(tmp_path / "idx", num_train=600, num_test=60)
    args = [sys.executable, str(ROOT / "launch.py"), "--experiment=mnist_lenet",
            "--mode=tune", "--tuner=random", "--max_trials=3", "--max_epochs=2",
            f"--data_dir={folder}", f"--results_dir={tmp_path / 'results'}",
            "--sweep_name=resume", "--verbose=0", "--batch_size=16"]
    sweep_dir = tmp_path / "results" / "mnist_lenet" / "resume"
    process = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    # settle: let Keras Tuner record the finished trial before the kill.
    kill_when(process, lambda: bool(list(sweep_dir.glob("trial_*/metrics.json"))),
              settle=0.5)
    finished_before = {p.parent.name: p.stat().st_mtime_ns
                       for p in sweep_dir.glob("trial_*/metrics.json")}
    assert 1 <= len(finished_before) < 3

    resumed = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "Resuming sweep" in resumed.stdout + resumed.stderr
    trials = _trials(sweep_dir)
    assert len(trials) == 3
    assert all((t / "metrics.json").exists() for t in trials)
    for name, mtime in finished_before.items():  # finished trials were not rerun
        assert (sweep_dir / name / "metrics.json").stat().st_mtime_ns == mtime
    best = json.loads((sweep_dir / "best_hparams.json").read_text())
    assert best["trials_completed"] == 3
    state = json.loads((sweep_dir / "tuner" / "oracle.json").read_text())
    assert len(state["end_order"]) == 3 and len(set(state["end_order"])) == 3
