"""Hyperparameter overrides from the command line: `name=value` pairs.

An experiment's hyperparameters are one flat dict (its `get_config()`); a
value's type is the type of its default. Overrides are checked against that
dict so a typo or a wrong type fails before any work starts.
"""

import json
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


def read_file(path: str) -> list[str]:
    """`name=value` assignments from a JSON file: a flat object, or the
    `best_hparams.json` a sweep writes (its "hparams" object)."""
    try:
        with open(path) as f:
            payload = json.load(f)
    except OSError as e:
        raise UserError(f"cannot read --hparams_file {path}: {e.strerror}") from None
    except ValueError as e:
        raise UserError(f"--hparams_file {path} is not JSON: {e}") from None
    if isinstance(payload, dict) and isinstance(payload.get("hparams"), dict):
        payload = payload["hparams"]
    if not isinstance(payload, dict):
        raise UserError(f"--hparams_file {path} must hold a JSON object of hyperparameters")
    return [f"{name}={_as_text(value)}" for name, value in payload.items()]


def _as_text(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


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
