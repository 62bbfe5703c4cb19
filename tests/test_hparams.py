import pytest

from common import hparams
from common.errors import UserError

DEFAULTS = {"learning_rate": 1e-3, "batch_size": 128, "optimizer": "adam",
            "augment": False}


def test_override_converts_to_the_defaults_types():
    config = hparams.override(DEFAULTS, ["learning_rate=0.1", "batch_size=64",
                                         "optimizer=sgd", "augment=true"])
    assert config == {"learning_rate": 0.1, "batch_size": 64, "optimizer": "sgd",
                      "augment": True}
    assert DEFAULTS["learning_rate"] == 1e-3  # defaults untouched


def test_unknown_name_is_named_and_valid_names_listed():
    with pytest.raises(UserError, match="'learnin_rate'.*batch_size, learning_rate"):
        hparams.override(DEFAULTS, ["learnin_rate=0.1"])


@pytest.mark.parametrize("assignment, bad", [("batch_size=1.5", "'1.5'"),
                                             ("learning_rate=fast", "'fast'"),
                                             ("augment=maybe", "'maybe'")])
def test_wrong_type_names_the_value(assignment, bad):
    with pytest.raises(UserError, match=bad):
        hparams.override(DEFAULTS, [assignment])


def test_missing_equals_sign():
    with pytest.raises(UserError, match="name=value"):
        hparams.override(DEFAULTS, ["learning_rate"])
