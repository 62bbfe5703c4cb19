"""--mode=train: one run of the experiment, then its serving export."""

from typing import Any

import tensorflow as tf

from common.config.options import RunOptions
from common.deploy import serving
from common.training.run import train_run


def run(experiment, options: RunOptions, config: dict,
        strategy: tf.distribute.Strategy) -> dict[str, Any]:
    """Trains one run (training/run.py) and writes its export/
    (deploy/serving.py: SavedModel, float TFLite, labels).

    Args:
        experiment: the experiment's module.
        options: the command's flags.
        config: the resolved hyperparameters.
        strategy: the strategy, created before any other TensorFlow op.

    Returns:
        What metrics.json holds.

    Raises:
        UserError: anything a user can fix.
        RunFailed: the run diverged (recorded as failed).
    """
    return train_run(experiment, options, config, strategy,
                     export=serving.export_after_training)
