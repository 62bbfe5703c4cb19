"""Experiments, found by folder name (no registry, no import side effects).

The contract: a package `experiments/<name>/` provides two functions,

  get_config() -> dict
      flat hyperparameters, extending common.config.hparams.SHARED (dataset,
      batch_size, epochs, learning_rate, ...); a value is a plain default or
      an HParam with its valid range; the docstring says the command and the
      accuracy to expect
  build_model(config, image_shape, num_classes) -> tf_keras.Model
      raw pixels in (image_shape, e.g. (28, 28, 1), values 0..255), logits
      out (num_classes, float32)

and may provide these hooks:

  search_space(hp)                 the Keras Tuner search space, over names
                                   of get_config()
  augment(image, label, config)    training-only augmentation inside the
                                   tf.data pipeline (one uint8 example)
  stages(config) -> [Stage]        stretches of training run one after the
                                   other by common/training/stage_runner.py
                                   (default: one stage of `epochs` at
                                   `learning_rate`)
  finish(context) -> dict          a last step after training (export,
                                   measurement); what it returns joins
                                   metrics.json
  load_scope() -> context manager  the custom objects the experiment's saved
                                   models need to load (a stage's
                                   load_scope, for readers: eval, export,
                                   predict, a Hyperband warm start)

The hooks are the package's public names: its `__all__` where it has one,
else the public functions it defines. `get(name)` checks them: a missing
required function or a public name that is no hook (a typo such as
`serch_space`) is a one-line error naming it.

What an experiment may import: the layers of common/ below the modes
(config, data, distribute, runs, training, deploy); tests/test_layers.py
checks it.

Experiments kept elsewhere: folders named in the environment variable
EXPERIMENTS_PATH (separated by os.pathsep) are searched after this one, so
`EXPERIMENTS_PATH=~/my_experiments python launch.py --experiment=mine` runs
~/my_experiments/mine/.
"""

import difflib
import importlib
import inspect
import os
import pathlib
from types import ModuleType

from common.errors import UserError

REQUIRED = ("get_config", "build_model")
OPTIONAL = ("search_space", "augment", "stages", "finish", "load_scope")
HOOKS = REQUIRED + OPTIONAL

# This package's search path, extended by EXPERIMENTS_PATH: import_module
# then finds an experiment kept elsewhere as experiments.<name>.
__path__ = list(__path__) + [  # noqa: F821  (set by the import system)
    str(pathlib.Path(p).expanduser()) for p in
    os.environ.get("EXPERIMENTS_PATH", "").split(os.pathsep) if p.strip()]


def names() -> list[str]:
    """The experiments that exist: every package folder on the search path."""
    found = set()
    for folder in map(pathlib.Path, __path__):
        if folder.is_dir():
            found.update(p.name for p in folder.iterdir()
                         if (p / "__init__.py").is_file() and not p.name.startswith("_")
                         and p.name.isidentifier())
    return sorted(found)


def _public_names(module: ModuleType) -> list[str]:
    if hasattr(module, "__all__"):
        return list(module.__all__)
    return [name for name, value in vars(module).items()
            if not name.startswith("_") and inspect.isfunction(value)
            and value.__module__.startswith(module.__name__)]


def check_contract(name: str, module: ModuleType) -> None:
    """Raises UserError unless `module` provides the required functions and
    every public name is a hook."""
    for hook in REQUIRED:
        if not callable(getattr(module, hook, None)):
            raise UserError(f"experiment {name!r} has no {hook}() (required: "
                            f"{', '.join(REQUIRED)})")
    for public in _public_names(module):
        if public in HOOKS:
            if not callable(getattr(module, public, None)):
                raise UserError(f"experiment {name!r}: {public} is not a function")
            continue
        close = difflib.get_close_matches(public, HOOKS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise UserError(f"experiment {name!r} has an unknown hook {public!r}{hint}; "
                        f"hooks: {', '.join(HOOKS)} (name helpers with a leading _ "
                        "or leave them out of __all__)")


def get(name: str) -> ModuleType:
    """Imports experiment `name` and checks it against the contract; raises
    UserError listing the valid names for an unknown one."""
    valid = names()
    if name not in valid:
        raise UserError(
            f"unknown experiment {name!r}; choose one of: {', '.join(valid)}")
    module = importlib.import_module(f"experiments.{name}")
    check_contract(name, module)
    return module


def hook(module: ModuleType, name: str):
    """The module's optional hook `name`, or None."""
    assert name in OPTIONAL, name
    return getattr(module, name, None)
