"""Hyperparameters: specs with valid ranges, overrides, one-line errors."""

import json
import math

import pytest

from common.config import hparams
from common.config.hparams import HParam
from common.errors import UserError

EXPERIMENT = {"learning_rate": 1e-3, "batch_size": 128, "optimizer": "adam",
              "augment": False, "dropout": HParam(0.0, ge=0, lt=1),
              "head": HParam("a", choices=("a", "b"))}
SPECS = hparams.specs_of(EXPERIMENT)
DEFAULTS = hparams.defaults(EXPERIMENT)


def test_specs_extend_the_shared_ones_and_keep_their_constraints():
    assert set(hparams.SHARED) <= set(SPECS)
    assert SPECS["learning_rate"].default == 1e-3 and SPECS["learning_rate"].gt == 0
    assert SPECS["optimizer"].choices == hparams.SHARED["optimizer"].choices
    assert SPECS["augment"].kind is bool and SPECS["dropout"].lt == 1
    assert DEFAULTS["dropout"] == 0.0 and DEFAULTS["momentum"] == 0.9


def test_override_converts_to_the_defaults_types():
    config = hparams.override(DEFAULTS, SPECS, ["learning_rate=0.1", "batch_size=64",
                                                "optimizer=sgd", "augment=true"])
    assert (config["learning_rate"], config["batch_size"], config["optimizer"],
            config["augment"]) == (0.1, 64, "sgd", True)
    assert DEFAULTS["learning_rate"] == 1e-3  # defaults untouched


def test_unknown_name_is_named_and_valid_names_listed():
    with pytest.raises(UserError, match="'learnin_rate'.*batch_size, .*learning_rate"):
        hparams.override(DEFAULTS, SPECS, ["learnin_rate=0.1"])


def test_a_name_given_twice_is_refused():
    with pytest.raises(UserError, match="--hparams sets 'dropout' twice"):
        hparams.override(DEFAULTS, SPECS, ["dropout=0.1", "dropout=0.3"])


@pytest.mark.parametrize("assignment, bad", [("batch_size=1.5", "'1.5'"),
                                             ("learning_rate=fast", "'fast'"),
                                             ("augment=maybe", "'maybe'")])
def test_wrong_type_names_the_value(assignment, bad):
    with pytest.raises(UserError, match=bad):
        hparams.override(DEFAULTS, SPECS, [assignment])


@pytest.mark.parametrize("name, value, valid", [
    ("learning_rate", -0.1, "float > 0"),
    ("learning_rate", 0.0, "float > 0"),
    ("learning_rate", math.nan, "finite"),
    ("learning_rate", math.inf, "finite"),
    ("dropout", 1.5, "float >= 0 and < 1"),
    ("dropout", -0.2, "float >= 0 and < 1"),
    ("batch_size", 0, "int >= 1"),
    ("head", "c", "one of: a, b"),
    ("optimizer", "nadam", "one of: adam, adamw, sgd, rmsprop"),
    ("validation_fraction", 1.0, "float > 0 and < 1"),
])
def test_values_outside_their_range_name_the_value_and_the_range(name, value, valid):
    config = {**DEFAULTS, name: value}
    with pytest.raises(UserError) as raised:
        hparams.check_all(config, SPECS)
    message = str(raised.value)
    assert repr(value) in message and name in message and valid in message
    assert "\n" not in message


def test_missing_equals_sign():
    with pytest.raises(UserError, match="name=value"):
        hparams.override(DEFAULTS, SPECS, ["learning_rate"])


def test_every_experiments_defaults_are_valid():
    import experiments
    for name in experiments.names():
        config = experiments.get(name).get_config()
        hparams.check_all(hparams.defaults(config), hparams.specs_of(config))


@pytest.mark.parametrize("name, hint", [
    ("fashion-mnist", "did you mean 'fashion_mnist'?"),
    ("Fashion_MNIST", "did you mean 'fashion_mnist'?"),
    ("cifar-10", "did you mean 'cifar10'?"),
    ("image_folder=x", "did you mean 'image_folder'?"),
    ("my-data", "a TFDS name would be 'my_data'"),
    ("", "without a download: mnist, fashion_mnist, cifar10, image_folder"),
])
def test_a_dataset_name_that_cannot_be_one_is_refused(name, hint):
    from common.config.resolve import check_dataset_name
    with pytest.raises(UserError) as raised:
        check_dataset_name(name)
    assert str(raised.value).startswith(f"bad --dataset {name!r}") and hint in str(raised.value)


def test_a_dashed_dataset_name_is_one_line_before_any_folder(tmp_path):
    import pathlib
    import subprocess
    import sys
    root = pathlib.Path(__file__).resolve().parent.parent
    done = subprocess.run([sys.executable, str(root / "launch.py"), "--experiment=mnist_lenet",
                           "--dataset=fashion-mnist", f"--results_dir={tmp_path}"], cwd=root,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        "launch.py: error: bad --dataset 'fashion-mnist' (did you mean 'fashion_mnist'?): a TFDS "
        "name is lower-case words joined by underscores; without a download: mnist, "
        "fashion_mnist, cifar10, image_folder")
    assert "Traceback" not in done.stderr and not list(tmp_path.iterdir())


@pytest.mark.parametrize("name, value, valid", [
    ("epochs", 123456789012345678901234567890, "expected int >= 0 and <= 100000"),
    ("batch_size", 2**40, "expected int >= 1 and <= 1048576"),
    ("early_stopping_patience", 2**31, "expected int >= 0 and <= 2147483647")])
def test_integers_too_large_for_tensorflow_are_refused_before_any_folder(
        tmp_path, name, value, valid):
    import experiments
    from common.config import resolve
    from common.config.options import RunOptions
    path = tmp_path / "best_hparams.json"
    path.write_text(json.dumps({"hparams": {name: value}}))
    with pytest.raises(UserError) as error:
        resolve.resolve_config(experiments.get("mnist_lenet"), RunOptions(
            experiment="mnist_lenet", hparams_file=str(path),
            results_dir=str(tmp_path / "results")))
    assert f"bad value {value} for hyperparameter '{name}': {valid}" == str(error.value)
    assert not (tmp_path / "results").exists()
