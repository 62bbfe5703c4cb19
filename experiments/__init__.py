"""Experiments, found by folder name (no registry, no import side effects).

Each experiment is a package `experiments/<name>/` exposing:
  get_config() -> dict    flat hyperparameters; docstring: command, accuracy
  search_space(hp)        the Keras Tuner search space over those names
  build_model(config, image_shape, num_classes) -> tf_keras.Model
and, optionally, `augment(image, label, config)` for training-only
augmentation inside the input pipeline.
"""

import importlib
import pathlib
from types import ModuleType

from common.errors import UserError

_HERE = pathlib.Path(__file__).parent


def names() -> list[str]:
    """The experiments that exist: every sub-folder that is a package."""
    return sorted(p.name for p in _HERE.iterdir()
                  if (p / "__init__.py").is_file() and not p.name.startswith("_"))


def get(name: str) -> ModuleType:
    """Imports experiment `name`, or raises UserError listing the valid ones."""
    valid = names()
    if name not in valid:
        raise UserError(
            f"unknown experiment {name!r}; choose one of: {', '.join(valid)}")
    return importlib.import_module(f"experiments.{name}")
