"""Hyperparameter overrides from the command line: `name=value` pairs.

An experiment's hyperparameters are one flat dict (its `get_config()`); a
value's type is the type of its default. Overrides are checked against that
dict so a typo or a wrong type fails before any work starts.
"""

from typing import Any, Iterable, Mapping

from common.errors import UserError

_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def parse_value(name: str, text: str, default: Any) -> Any:
    """Converts `text` to the type of `default`, or raises UserError."""
    kind = type(default)
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
        if kind is str:
            return text
    except ValueError:
        pass
    else:
        raise UserError(
            f"hyperparameter {name!r} has unsupported type {kind.__name__}")
    raise UserError(
        f"bad value {text!r} for hyperparameter {name!r}: expected "
        f"{kind.__name__} (default {default!r})")


def override(defaults: Mapping[str, Any],
             assignments: Iterable[str]) -> dict[str, Any]:
    """Returns a copy of `defaults` with `name=value` assignments applied."""
    config = dict(defaults)
    for assignment in assignments:
        name, sep, text = assignment.partition("=")
        name = name.strip()
        if not sep or not name:
            raise UserError(
                f"bad --hparams entry {assignment!r}: expected name=value")
        if name not in defaults:
            raise UserError(
                f"unknown hyperparameter {name!r}; valid names: "
                f"{', '.join(sorted(defaults))}")
        config[name] = parse_value(name, text.strip(), defaults[name])
    return config
