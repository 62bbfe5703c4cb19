"""Speed levers: each flag is accepted, reaches the model, and a bad value
is a one-line error."""

import json
import pathlib
import subprocess
import sys

import pytest
import tensorflow as tf
import tf_keras

import experiments
from common.config import hparams
from common.config.options import RunOptions
from common.errors import UserError
from common.modes import dispatch
from common.training import optimizers, precision
from tests.fixtures import write_idx_dataset

ROOT = pathlib.Path(__file__).resolve().parent.parent
LENET = experiments.get("mnist_lenet")


def _config(**levers):
    return {**hparams.defaults(LENET.get_config()), **levers}


def test_compile_arguments_reach_the_model():
    config = _config(steps_per_execution=4, jit_compile=True)
    model = LENET.build_model(config, (28, 28, 1), 10)
    optimizers.compile_model(model, config, 1e-3, 100)
    assert int(model._steps_per_execution.numpy()) == 4
    assert model._jit_compile is True


def test_levers_through_the_runner(tmp_path):
    policy = "mixed_bfloat16" if precision.cpu_has_bfloat16() else "float32"
    folder = write_idx_dataset(tmp_path / "idx", num_train=320, num_test=64)
    metrics = dispatch.run(RunOptions(
        experiment="mnist_lenet", data_dir=str(folder), results_dir=str(tmp_path / "r"),
        epochs=2, batch_size=16, verbose=0, run_name="fast", steps_per_execution=6,
        jit_compile=True, mixed_precision=policy))
    config = json.loads((tmp_path / "r/mnist_lenet/fast/config.json").read_text())["hparams"]
    assert (config["steps_per_execution"], config["jit_compile"],
            config["mixed_precision"]) == (6, True, policy)
    assert [row["epoch"] for row in metrics["history"]] == [0, 1]
    assert metrics["history"][-1]["loss"] < metrics["history"][0]["loss"]
    assert tf_keras.mixed_precision.global_policy().name == "float32"  # restored


def test_mixed_bfloat16_policy_keeps_float32_variables_and_logits():
    with precision.precision(_config(mixed_precision="mixed_bfloat16")):
        model = LENET.build_model(_config(), (28, 28, 1), 10)
    conv = model.get_layer("conv1")
    assert conv.compute_dtype == "bfloat16" and conv.variable_dtype == "float32"
    assert model.get_layer("logits").compute_dtype == "float32"
    assert model(tf.zeros((1, 28, 28, 1))).dtype == tf.float32


def test_mixed_float16_gets_a_loss_scale_optimizer():
    config = _config(mixed_precision="mixed_float16")
    with precision.precision(config):
        model = LENET.build_model(config, (28, 28, 1), 10)
        optimizers.compile_model(model, config, 1e-3, 100)
    assert isinstance(model.optimizer, tf_keras.mixed_precision.LossScaleOptimizer)


@pytest.mark.parametrize("levers, needle", [
    (dict(steps_per_execution=0), "bad value 0 for hyperparameter 'steps_per_execution': "
                                  "expected int >= 1"),
    (dict(mixed_precision="float8"), "bad value 'float8' for hyperparameter "
                                     "'mixed_precision': expected one of: float32, "),
])
def test_bad_values(levers, needle):
    with pytest.raises(UserError, match=needle):
        hparams.check_all(_config(**levers), hparams.specs_of(LENET.get_config()))


def test_precision_that_would_only_run_slower_is_refused(monkeypatch):
    if tf.config.list_physical_devices("GPU"):
        pytest.skip("this machine has a GPU")
    monkeypatch.setattr(precision, "cpu_has_bfloat16", lambda: False)
    with pytest.raises(UserError, match="no bfloat16 support") as raised:
        precision.check_hardware(_config(mixed_precision="mixed_bfloat16"))
    assert "\n" not in str(raised.value)
    with pytest.raises(UserError, match="mixed_float16 needs a GPU"):
        precision.check_hardware(_config(mixed_precision="mixed_float16"))


@pytest.mark.parametrize("flag, needle", [
    ("--mixed_precision=float8", "float8"),
    ("--steps_per_execution=0", "steps_per_execution"),
    ("--hparams=jit_compile=perhaps", "'perhaps'"),
])
def test_bad_flags_are_one_line(tmp_path, flag, needle):
    result = subprocess.run([sys.executable, str(ROOT / "launch.py"),
                             "--experiment=mnist_lenet", flag, f"--results_dir={tmp_path}"],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert needle in result.stderr
