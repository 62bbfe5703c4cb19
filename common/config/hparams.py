"""Hyperparameters: the shared defaults, their valid values, and overrides.

An experiment's hyperparameters are one flat dict: `SHARED` (what `common/`
reads, so every experiment has them) extended by the experiment's
`get_config()`. A value there is either a plain default (its type is then the
hyperparameter's type) or an `HParam`, which also says what values are valid:

    "dropout": HParam(0.0, ge=0, lt=1),
    "optimizer": HParam("adam", choices=("adam", "sgd")),

A plain default given for a name of `SHARED` keeps the shared constraints
(an experiment changes the default, not what is valid). Every value, from
the defaults, `--hparams_file`, `--hparams` or a dedicated flag, is checked
against its type and constraints before any work starts; a bad one is a
UserError naming the value and what is valid.
"""

import dataclasses
import math
from typing import Any, Iterable, Mapping, Optional

from common import inputs
from common.config import choices
from common.errors import UserError

_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}
_TYPES = (bool, int, float, str)
# Every integer hyperparameter is bounded: at most what a TensorFlow int32
# holds (epochs, steps and sizes become int32 tensors), where its spec sets
# no lower upper bound.
INT_MAX = 2**31 - 1


@dataclasses.dataclass(frozen=True)
class HParam:
    """A default and its valid values: bounds (`ge`, `gt`, `le`, `lt`, for
    numbers) or `choices`. Floats must also be finite.

    The default's type is the hyperparameter's type (bool, int, float or
    str); an int is also accepted where the type is float, a bool never
    where it is int.

    Attributes:
        default: the value used when no source sets one; its type is the
            hyperparameter's.
        ge: valid values are >= ge; None: no such bound.
        gt: valid values are > gt; None: no such bound.
        le: valid values are <= le; None: no such bound.
        lt: valid values are < lt; None: no such bound.
        choices: the only valid values; None: any value of the type (within
            the bounds).
        help: what the hyperparameter does, in words, for readers of the
            config; no code reads it at present.
    """
    default: Any
    ge: Optional[float] = None
    gt: Optional[float] = None
    le: Optional[float] = None
    lt: Optional[float] = None
    choices: Optional[tuple] = None
    help: str = ""

    @property
    def kind(self) -> type:
        """The hyperparameter's type: the default's (bool, int, float or str)."""
        return type(self.default)

    @property
    def upper(self) -> Optional[float]:
        """The `le` bound in force: the spec's, or INT_MAX for an int
        hyperparameter without `le` or `lt`."""
        if self.kind is int and self.le is None and self.lt is None and self.choices is None:
            return INT_MAX
        return self.le

    def valid(self) -> str:
        """What is valid, in words, for error messages.

        Returns:
            "one of: a, b, c" where there are choices, else the type's name
            and its bounds ("float >= 0 and < 1", "int >= 1", "bool").
        """
        if self.choices is not None:
            return "one of: " + ", ".join(str(c) for c in self.choices)
        bounds = [f"{op} {_number(v)}" for op, v in
                  ((">=", self.ge), (">", self.gt), ("<=", self.upper), ("<", self.lt))
                  if v is not None]
        return f"{self.kind.__name__}" + (" " + " and ".join(bounds) if bounds else "")

    def check(self, name: str, value: Any) -> None:
        """Raises UserError unless `value` is valid for hyperparameter `name`.

        Args:
            name: the hyperparameter's name, for the message.
            value: the value to check (already of a Python type, not text).

        Raises:
            UserError: `value` is not of the hyperparameter's type, is a float
                that is not finite, is not one of the choices, or is outside
                a bound; the message names the value and what is valid.
        """
        kind = self.kind
        ok_type = (isinstance(value, kind) and not (kind is int and isinstance(value, bool))
                   or (kind is float and isinstance(value, int)
                       and not isinstance(value, bool)))
        if not ok_type:
            raise UserError(f"bad value {value!r} for hyperparameter {name!r}: "
                            f"expected {self.valid()}")
        if kind is float and not math.isfinite(value):
            raise UserError(f"bad value {value!r} for hyperparameter {name!r}: "
                            f"expected a finite {self.valid()}")
        if self.choices is not None and value not in self.choices:
            raise UserError(f"bad value {value!r} for hyperparameter {name!r}: "
                            f"expected {self.valid()}")
        for bound, holds in ((self.ge, lambda b: value >= b), (self.gt, lambda b: value > b),
                             (self.upper, lambda b: value <= b), (self.lt, lambda b: value < b)):
            if bound is not None and not holds(bound):
                raise UserError(f"bad value {value!r} for hyperparameter {name!r}: "
                                f"expected {self.valid()}")


def _number(value: float) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


# What common/ reads; every experiment's config extends it. Experiments give
# their own defaults for these names in get_config().
SHARED: dict[str, HParam] = {
    "dataset": HParam("mnist", help="TFDS name (mnist, fashion_mnist, cifar10, ...) "
                      "or image_folder (--data_dir: class folders of images)"),
    "validation_fraction": HParam(0.1, gt=0, lt=1,
                                  help="share of train held out for validation"),
    # --dataset=image_folder (common/data/image_folder.py); experiments set their own.
    "test_fraction": HParam(0.1, gt=0, lt=1, help="image_folder, one folder per class: "
                            "share of each class held out for testing"),
    "image_size": HParam(0, ge=0, le=4096, help="image_folder: images resized to N x N; "
                         "0: their own size, which they must share"),
    "image_channels": HParam(0, choices=(0, 1, 3), help="image_folder: 1 grey, 3 RGB; "
                             "0: grey if every image is grey, else RGB"),
    "batch_size": HParam(64, ge=1, le=2**20, help="global batch, split across replicas"),
    "epochs": HParam(10, ge=0, le=100_000, help="single-stage experiments: epochs to train; "
                     "multi-stage ones: 0 keeps each stage's own, N runs N in every "
                     "training stage"),
    "learning_rate": HParam(1e-3, gt=0, help="single-stage experiments' rate"),
    "optimizer": HParam("adam", choices=choices.OPTIMIZERS),
    "momentum": HParam(0.9, ge=0, lt=1, help="SGD's momentum"),
    "lr_schedule": HParam("constant", choices=choices.LR_SCHEDULES,
                          help="per stage, over that stage's steps"),
    "early_stopping_patience": HParam(0, ge=0, help="epochs without a better "
                                      "val_loss before a stage stops; 0: off"),
    "steps_per_execution": HParam(1, ge=1, le=100_000, help="training steps per call into the graph"),
    "jit_compile": HParam(False, help="XLA for the train step"),
    "mixed_precision": HParam("float32", choices=choices.PRECISIONS),
    "deterministic": HParam(False, help="TensorFlow op determinism and a "
                            "deterministic input pipeline: the same seed repeats a run"),
}


def specs_of(experiment_config: Mapping[str, Any]) -> dict[str, HParam]:
    """Every hyperparameter's spec: SHARED, extended and re-defaulted by the
    experiment's get_config().

    An HParam in the config replaces the shared spec of its name entirely; a
    plain value for a name of SHARED keeps the shared constraints with a new
    default; a plain value for any other name becomes an unconstrained
    HParam of that default.

    Args:
        experiment_config: an experiment's get_config(), {name: plain default
            or HParam}.

    Returns:
        {name: HParam}, SHARED's names first, then the experiment's own.

    Raises:
        UserError: a default is not a bool, int, float or str.
    """
    specs = dict(SHARED)
    for name, value in experiment_config.items():
        if isinstance(value, HParam):
            spec = value
        elif name in SHARED:
            spec = dataclasses.replace(SHARED[name], default=value)
        else:
            spec = HParam(value)
        if not isinstance(spec.default, _TYPES):
            raise UserError(f"hyperparameter {name!r} has unsupported type "
                            f"{type(spec.default).__name__} (bool, int, float or str)")
        specs[name] = spec
    return specs


def defaults(experiment_config: Mapping[str, Any]) -> dict[str, Any]:
    """The plain values of a get_config() dict (HParam specs unwrapped),
    SHARED included.

    Args:
        experiment_config: an experiment's get_config(), {name: plain default
            or HParam}.

    Returns:
        {name: default}, one entry per hyperparameter of `specs_of()`.

    Raises:
        UserError: a default is not a bool, int, float or str (from
            specs_of()).
    """
    return {name: spec.default for name, spec in specs_of(experiment_config).items()}


def check_all(config: Mapping[str, Any], specs: Mapping[str, HParam]) -> None:
    """Checks every value of `config` against its spec.

    Args:
        config: {name: value}; every name must be a key of `specs` (a name
            that is not raises KeyError, since the callers build `config`
            from `specs`).
        specs: {name: HParam}, as from specs_of().

    Raises:
        UserError: a value is invalid for its spec (HParam.check()).
    """
    for name, value in config.items():
        specs[name].check(name, value)


def parse_value(name: str, text: str, spec: HParam) -> Any:
    """Converts `text` to the hyperparameter's type, or raises UserError.

    Only the type is checked here, not the bounds or choices (check_all()
    does that). A bool is true, 1, yes or on, or false, 0, no or off, in any
    case; an int is what int() reads (no "1e3"); a float what float()
    reads; a str is `text` as given.

    Args:
        name: the hyperparameter's name, for the message.
        text: the value as written (the caller strips surrounding spaces).
        spec: the hyperparameter's HParam; its `kind` is the target type.

    Returns:
        The value, a bool, int, float or str.

    Raises:
        UserError: `text` is not a value of the type; the message names what
            is valid and the default.
    """
    kind = spec.kind
    try:
        if kind is bool:
            lowered = text.strip().lower()
            if lowered in _TRUE:
                return True
            if lowered in _FALSE:
                return False
            raise ValueError
        if kind is int:
            return int(text)
        if kind is float:
            return float(text)
        return text
    except ValueError:
        raise UserError(f"bad value {text!r} for hyperparameter {name!r}: expected "
                        f"{spec.valid()} (default {spec.default!r})") from None


def read_file(path: str) -> list[str]:
    """`name=value` assignments from a JSON file: a flat object, or the
    `best_hparams.json` a sweep writes (its "hparams" object).

    Args:
        path: the file's path (--hparams_file).

    Returns:
        ["name=value", ...] in the file's order, for override(); a JSON
        bool is written "true" or "false", any other value as str() writes
        it.

    Raises:
        UserError: the file cannot be read, is not JSON, or holds no JSON
            object of hyperparameters.
    """
    try:
        payload = inputs.read_json(path)  # a regular file, bounded, strict JSON
    except OSError as e:
        raise UserError(f"cannot read --hparams_file {path}: {e.strerror}") from None
    except ValueError as e:
        raise UserError(f"--hparams_file {path} is not JSON: {e}") from None
    if isinstance(payload, dict) and isinstance(payload.get("hparams"), dict):
        payload = payload["hparams"]
    if not isinstance(payload, dict):
        raise UserError(f"--hparams_file {path} must hold a JSON object of hyperparameters")
    bad = [name for name, value in payload.items()
           if not isinstance(value, (bool, int, float, str))]
    if bad:
        raise UserError(f"--hparams_file {path}: {bad[0]!r} is not a number, a string or "
                        "true/false")
    return [f"{name}={_as_text(value)}" for name, value in payload.items()]


def _as_text(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def override(config: Mapping[str, Any], specs: Mapping[str, HParam],
             assignments: Iterable[str], source: str = "--hparams") -> dict[str, Any]:
    """Returns a copy of `config` with `name=value` assignments applied; a
    name given twice in one source is an error.

    Each value is converted to its hyperparameter's type (parse_value());
    bounds and choices are left to check_all().

    Args:
        config: {name: value}, the values so far.
        specs: {name: HParam}, as from specs_of(); only these names may be set.
        assignments: "name=value" strings (spaces around the name and the
            value are stripped).
        source: where the assignments come from ("--hparams",
            "--hparams_file"), for messages.

    Returns:
        A new {name: value} dict; `config` itself is not changed.

    Raises:
        UserError: an entry without "=" or without a name, an unknown name
            (the message lists the valid ones), a name set twice, or a value
            not of its type.
    """
    config = dict(config)
    seen: set[str] = set()
    for assignment in assignments:
        name, sep, text = assignment.partition("=")
        name = name.strip()
        if not sep or not name:
            raise UserError(f"bad {source} entry {assignment!r}: expected name=value")
        if name not in specs:
            raise UserError(f"unknown hyperparameter {name!r}; valid names: "
                            f"{', '.join(sorted(specs))}")
        if name in seen:
            raise UserError(f"{source} sets {name!r} twice; give it once")
        seen.add(name)
        config[name] = parse_value(name, text.strip(), specs[name])
    return config
