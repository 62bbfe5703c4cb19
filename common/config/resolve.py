"""An experiment's hyperparameters, resolved from every source in order."""

from typing import Any

from common.config import hparams
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
            experiment has no hyperparameter for, an empty dataset name.
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
    if not config["dataset"].strip():
        raise UserError("--dataset is empty; name a dataset (mnist, fashion_mnist, cifar10, "
                        "image_folder or another TFDS name)")
    return config
