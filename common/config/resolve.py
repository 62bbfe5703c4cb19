"""An experiment's hyperparameters, resolved from every source in order."""

import difflib
import re
from typing import Any

from common.config import choices, hparams
from common.config.options import HPARAM_FLAGS, RunOptions
from common.errors import UserError


def resolve_config(experiment, options: RunOptions) -> dict[str, Any]:
    """The run's hyperparameters: hparams.SHARED and the experiment's
    get_config(), then --hparams_file, then --hparams, then the dedicated
    flags (--epochs, --batch_size, ...); every value checked against its
    valid range.

    Args:
        experiment: the experiment's module (experiments.get(name)); only
            its get_config() is called.
        options: the command's flags.

    Returns:
        {name: value}, flat, one entry per hyperparameter of the experiment.

    Raises:
        UserError: a bad value, an unknown name, a dedicated flag the
            experiment has no hyperparameter for, a dataset name that is no
            TFDS name (check_dataset_name).
    """
    specs = hparams.specs_of(experiment.get_config())
    config = {name: spec.default for name, spec in specs.items()}
    if options.hparams_file:
        config = hparams.override(config, specs, hparams.read_file(options.hparams_file),
                                  source="--hparams_file")
    config = hparams.override(config, specs, options.hparams)
    for name in HPARAM_FLAGS:
        value = getattr(options, name)
        if value is None:
            continue
        if name not in specs:
            raise UserError(f"experiment {options.experiment!r} has no {name!r} "
                            f"hyperparameter, so --{name} does not apply; its "
                            f"hyperparameters: {', '.join(sorted(specs))}")
        config[name] = value
    hparams.check_all(config, specs)
    check_dataset_name(config["dataset"])
    return config


# TFDS' builder names: lower-case words joined by underscores, optionally a
# config and a version (fashion_mnist, imagenet2012/subset:5.0.0).
_TFDS_NAME = re.compile(r"[a-z][a-z0-9_]*(/[a-z0-9_.]+)?(:[0-9.*]+)?")


def check_dataset_name(name: str) -> None:
    """Refuses a dataset name that cannot be one, before any work: TFDS'
    names are lower-case words joined by underscores (fashion_mnist, not
    the fashion-mnist of Debian's package folder).

    Args:
        name: the dataset hyperparameter (--dataset, --hparams, a file).

    Raises:
        UserError: naming the value, the likely name (a case or dash slip,
            or a close match) and the datasets read without a download.
    """
    if _TFDS_NAME.fullmatch(name):
        return
    guess = re.sub(r"[-\s]+", "_", name.strip().lower()).strip("_/")
    close = difflib.get_close_matches(guess, choices.DATASETS, n=1, cutoff=0.8)
    hint = f" (did you mean {close[0]!r}?)" if close else (
        f" (a TFDS name would be {guess!r})" if _TFDS_NAME.fullmatch(guess) else "")
    raise UserError(f"bad --dataset {name!r}{hint}: a TFDS name is lower-case words joined by "
                    f"underscores; without a download: {', '.join(choices.DATASETS)}")
