"""The files of a run folder, written so that a kill never leaves a torn one.

Strict JSON written atomically (non-finite numbers as null), history.csv
(one row per epoch, rewritten atomically), the checked run and sweep names,
fresh timestamped folders, and file-system errors as one line. The folder
layout is results/README.md's; common/runs/folder.py is a run folder's life.
"""

import csv
import datetime
import io
import json
import math
import os
import pathlib
import platform
import tempfile
from typing import Any

from common.errors import UserError
from common.inputs import MAX_JSON_BYTES, read_bytes, read_json  # noqa: F401  (re-exported)

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.json"
HISTORY_FILE = "history.csv"
LOCK_FILE = ".lock"
MAX_NAME_LENGTH = 100


def finite(payload: Any) -> Any:
    """`payload` with every non-finite float replaced by None (JSON has no
    NaN or Infinity).

    Dicts, lists and tuples are walked recursively (tuples come back as
    lists; dict keys are kept as they are); other values are returned
    unchanged.

    Args:
        payload: any JSON-like value: a float, dict, list, tuple or other
            value.

    Returns:
        A copy of `payload` (new dicts and lists) in which every float that
        is NaN or infinite is None.
    """
    if isinstance(payload, float):
        return payload if math.isfinite(payload) else None
    if isinstance(payload, dict):
        return {k: finite(v) for k, v in payload.items()}
    if isinstance(payload, (list, tuple)):
        return [finite(v) for v in payload]
    return payload


def write_text_atomic(path: pathlib.Path, text: str) -> None:
    """Writes `text` to `path` so that readers see the old file or the whole
    new one: a temporary file in the same folder, synced, made readable by
    all (0644), then renamed over `path` (which replaces a symbolic link
    there rather than writing through it).

    Args:
        path: the file to write.
        text: its new content.

    Raises:
        OSError: the file cannot be written; the temporary file is removed.
    """
    path = pathlib.Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it private; results are for reading
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_json_atomic(path: pathlib.Path, payload: Any) -> None:
    """Writes strict JSON so that readers see the old file or the whole new one.

    The text (indented by 2, keys sorted, non-finite floats as null, values
    JSON cannot hold written as their str()) goes to a temporary file in the
    same folder, is synced, made readable by all (mode 0644) and renamed
    over `path`.

    Args:
        path: the file to write; its folder must exist.
        payload: the JSON-like value to write (see finite()).

    Raises:
        OSError: the folder cannot be written (the temporary file is removed).
    """
    text = json.dumps(finite(payload), indent=2, sort_keys=True, default=str,
                      allow_nan=False)
    write_text_atomic(path, text + "\n")


def inside(run_dir: pathlib.Path, relative, what: str) -> pathlib.Path:
    """`relative` (a path read from one of the run's files) resolved inside
    the run folder.

    Args:
        run_dir: the run folder.
        relative: the path as the file gives it; it must be a relative path
            string.
        what: what the path is, for the message ("model 'model' of ...").

    Returns:
        run_dir / relative, with every symbolic link resolved.

    Raises:
        UserError: `relative` is not a string, is absolute, or resolves
            outside the run folder ("..", a symbolic link out of it).
    """
    if not isinstance(relative, str) or not relative or "\0" in relative \
            or len(relative) > 4096 or pathlib.PurePath(relative).is_absolute():
        raise UserError(f"{what}: path {relative!r} is not a path inside the run folder")
    root = pathlib.Path(run_dir).resolve()
    resolved = (root / relative).resolve()
    if resolved != root and root not in resolved.parents:
        raise UserError(f"{what}: path {relative!r} leads outside the run folder {run_dir}")
    return resolved


def library_versions() -> dict[str, str]:
    """The versions of Python and of the libraries a run depends on, for
    config.json.

    Returns:
        {"python": version, and for each of tensorflow, tf-keras,
        tensorflow-datasets, tensorflow-model-optimization, keras-tuner and
        tensorboard: its installed version or "not installed"}.
    """
    from importlib import metadata
    versions = {"python": platform.python_version()}
    for package in ("tensorflow", "tf-keras", "tensorflow-datasets",
                    "tensorflow-model-optimization", "keras-tuner", "tensorboard"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


def check_name(flag: str, name: str) -> None:
    """Raises UserError unless `name` is one plain, printable folder name.

    A plain name is not empty or all whitespace, holds no path separator
    (/, a backslash or os.altsep), does not start with a dot (so neither . nor ..
    nor a hidden name), is at most MAX_NAME_LENGTH characters, holds only
    printable characters and encodes as UTF-8.

    Args:
        flag: the flag's name without dashes (run_name, sweep_name), for
            the message.
        name: the name to check.

    Raises:
        UserError: `name` is not a plain folder name; the message says why.
    """
    problem = None
    if not name or not name.strip():
        problem = "it is empty"
    elif "/" in name or (os.altsep and os.altsep in name) or "\\" in name:
        problem = "it holds a path separator"
    elif name.startswith("."):
        problem = "it starts with a dot"
    elif len(name) > MAX_NAME_LENGTH:
        problem = f"it is {len(name)} characters long (at most {MAX_NAME_LENGTH})"
    elif not name.isprintable():
        problem = "it holds control characters"
    else:
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:
            problem = "it is not valid UTF-8"
    if problem:
        raise UserError(f"bad --{flag} {name!r}: {problem}; use a plain folder name "
                        "such as fm-lenet-1")


def os_error(e: OSError, doing: str) -> UserError:
    """A one-line UserError for a file-system failure: the path and the
    operating system's reason.

    Args:
        e: the operating system's error.
        doing: what failed, as a verb phrase ("lock run", "create the run
            folder"), after "cannot".

    Returns:
        UserError("cannot <doing> <e.filename>: <e.strerror>"), for the
        caller to raise (without the filename when `e` has none).
    """
    where = f" {e.filename}" if e.filename else ""
    return UserError(f"cannot {doing}{where}: {e.strerror or e}")


def new_dir(parent: pathlib.Path, prefix: str = "") -> pathlib.Path:
    """Creates and returns a fresh timestamped folder under `parent` (with a
    suffix if another run took that second).

    Args:
        parent: the folder to create it in (created with its parents if
            missing).
        prefix: text before the timestamp ("sweep-" for sweeps).

    Returns:
        The new folder: <parent>/<prefix>YYYYmmdd-HHMMSS, or with -1 ... -999
        appended when that name is taken.

    Raises:
        UserError: all 1000 names of this second are taken.
        OSError: `parent` cannot be created or written.
    """
    stamp = prefix + datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    for suffix in range(1000):
        path = pathlib.Path(parent) / (stamp if suffix == 0 else f"{stamp}-{suffix}")
        try:
            path.mkdir(parents=True)
            return path
        except FileExistsError:
            continue
    raise UserError(f"could not find a free run name under {parent}")


def read_history(run_dir: pathlib.Path) -> list[dict[str, Any]]:
    """Per-epoch rows of history.csv, one per epoch (the last write wins),
    sorted by epoch; a torn or malformed row is dropped (that epoch is then
    redone or refilled by the resuming run).

    Args:
        run_dir: the folder holding history.csv.

    Returns:
        A list of {"epoch": int, column: float or None, ...}, one per epoch in
        ascending order (an empty cell or "None" reads as None); [] when
        there is no history.csv.

    Raises:
        UserError: history.csv is a symbolic link, not a regular file, or
            larger than MAX_JSON_BYTES.
        OSError: history.csv exists but cannot be read.
    """
    path = pathlib.Path(run_dir) / HISTORY_FILE
    if not os.path.lexists(path):
        return []
    try:
        text = read_bytes(path, MAX_JSON_BYTES).decode("utf-8", errors="replace")
    except ValueError as e:
        raise UserError(f"cannot read {path}: {e}") from None
    rows: dict[int, dict[str, Any]] = {}
    for row in csv.DictReader(io.StringIO(text, newline="")):
        try:
            if None in row or any(v is None for v in row.values()):
                continue  # fewer or more fields than the header: torn
            epoch = int(row.pop("epoch"))
            rows[epoch] = {k: (float(v) if v not in ("", "None") else None)
                           for k, v in row.items()}
        except (ValueError, TypeError, KeyError):
            continue  # a malformed row, or no epoch column
    return [{"epoch": e, **rows[e]} for e in sorted(rows)]


def write_history(run_dir: pathlib.Path, rows: list[dict[str, Any]]) -> None:
    """Writes history.csv atomically: one row per epoch, columns the union of
    the rows' keys (epoch first).

    Rows are written sorted by epoch; a missing or None value is an empty
    cell. The file is replaced atomically, as write_json_atomic() does.

    Args:
        run_dir: the folder to write history.csv in.
        rows: the per-epoch rows, each a dict with an "epoch" key (int) and
            figures by column name.

    Raises:
        OSError: the folder cannot be written.
    """
    columns = ["epoch"] + sorted({k for row in rows for k in row} - {"epoch"})
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in sorted(rows, key=lambda r: r["epoch"]):
        writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in columns})
    write_text_atomic(pathlib.Path(run_dir) / HISTORY_FILE, buffer.getvalue())
