"""The experiment contract: two functions are a whole experiment; hooks are
checked; common/ names no experiment."""

import json
import os
import pathlib
import subprocess
import sys
import types

import pytest

import experiments
from common.errors import UserError
from tests.fixtures import write_idx_dataset

ROOT = pathlib.Path(__file__).resolve().parent.parent

# What a newcomer writes first: the whole experiment, in one file.
TINY_DENSE = '''"""A small dense network: the least an experiment needs."""

import tf_keras


def get_config():
    return {"dataset": "mnist", "epochs": 2, "batch_size": 32, "learning_rate": 3e-3,
            "units": 32}


def build_model(config, image_shape, num_classes):
    inputs = tf_keras.Input(shape=image_shape)
    x = tf_keras.layers.Rescaling(1.0 / 255)(inputs)
    x = tf_keras.layers.Flatten()(x)
    x = tf_keras.layers.Dense(config["units"], activation="relu")(x)
    outputs = tf_keras.layers.Dense(num_classes)(x)
    return tf_keras.Model(inputs, outputs)
'''


def _launch(env, *args):
    return subprocess.run([sys.executable, str(ROOT / "launch.py"), *args], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_a_two_function_experiment_trains_evaluates_sweeps_and_reports(tmp_path):
    folder = tmp_path / "my_experiments" / "tiny_dense"
    folder.mkdir(parents=True)
    (folder / "__init__.py").write_text(TINY_DENSE)
    data = write_idx_dataset(tmp_path / "idx", num_train=400, num_test=100)
    results = tmp_path / "results"
    env = dict(os.environ, EXPERIMENTS_PATH=str(tmp_path / "my_experiments"))
    common = ["--experiment=tiny_dense", f"--data_dir={data}", f"--results_dir={results}",
              "--verbose=0"]

    trained = _launch(env, *common, "--run_name=t")
    assert trained.returncode == 0, trained.stderr[-3000:]
    metrics = json.loads((results / "tiny_dense" / "t" / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["epochs"] == 2
    assert metrics["test_accuracy"] > 0.5  # learnable fixture; chance is 0.1
    assert metrics["num_parameters"] == 28 * 28 * 32 + 32 + 32 * 10 + 10

    evaluated = _launch(env, *common, "--mode=eval", "--run_name=t")
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    scores = json.loads((results / "tiny_dense" / "t" / "eval.json").read_text())
    assert scores["models"]["model"]["accuracy"] == pytest.approx(metrics["test_accuracy"])

    # A search space is the only addition a sweep needs.
    (folder / "__init__.py").write_text(TINY_DENSE + '''

def search_space(hp):
    hp.Choice("units", [16, 32])
''')
    swept = _launch(env, *common, "--mode=tune", "--tuner=random", "--max_trials=2",
                    "--max_epochs=1", "--sweep_name=s")
    assert swept.returncode == 0, swept.stderr[-3000:]
    best = json.loads((results / "tiny_dense" / "s" / "best_hparams.json").read_text())
    assert best["trials_completed"] == 2 and best["hparams"]["units"] in (16, 32)

    reported = subprocess.run([sys.executable, "-m", "common.runs.report",
                               f"--results_dir={results}"], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=120)
    assert reported.returncode == 0, reported.stderr
    assert "== tiny_dense (3 runs)" in reported.stdout


def _module(name, **functions):
    module = types.ModuleType(f"experiments.{name}")
    for key, value in functions.items():
        value.__module__ = module.__name__
        setattr(module, key, value)
    return module


def _get_config():
    return {}


def _build_model(config, image_shape, num_classes):
    return None


def test_a_missing_required_function_is_named():
    with pytest.raises(UserError, match="experiment 'x' has no build_model\\(\\)"):
        experiments.check_contract("x", _module("x", get_config=_get_config))


def test_a_misspelt_hook_is_named_with_the_likely_one():
    def serch_space(hp):
        pass

    module = _module("x", get_config=_get_config, build_model=_build_model,
                     serch_space=serch_space)
    with pytest.raises(UserError, match="unknown hook 'serch_space' \\(did you mean "
                                        "'search_space'\\?\\)"):
        experiments.check_contract("x", module)


@pytest.mark.parametrize("name", experiments.names())
def test_every_experiment_takes_raw_pixels_and_returns_logits(name):
    """The contract's promise, on each experiment of the collection: its
    default hyperparameters resolve, and build_model() turns a batch of raw
    uint8-range images into one float32 logit per class."""
    import numpy as np
    from common.config import resolve
    from common.config.options import RunOptions

    experiment = experiments.get(name)
    has_weights = "weights" in experiment.get_config()
    config = resolve.resolve_config(experiment, RunOptions(
        experiment=name, weights="none" if has_weights else None))
    shape = (32, 32, 3)  # every experiment of the collection builds from 32x32 RGB
    model = experiment.build_model(config, shape, 7)
    images = np.random.default_rng(0).integers(0, 256, (2, *shape)).astype(np.float32)
    logits = model(images, training=False)
    assert tuple(logits.shape) == (2, 7)
    assert logits.dtype.name == "float32"
    assert np.isfinite(logits.numpy()).all()
