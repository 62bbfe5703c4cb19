"""Run folders and the files in them.

    results/<experiment>/<run>/
      config.json    resolved hyperparameters, flags, data, library versions
      history.csv    one row per finished epoch (rewritten atomically)
      metrics.json   the outcome (status, figures, models): written last
      logs/          TensorBoard: train/, validation/, test/, hparams
      backup/        resume state while the run is unfinished
      stages/        finished stages of an unfinished run
      model/         the trained model(s)
      .lock          held by the process working on the run

A new run never reuses a folder. Naming an unfinished run (`--run_name`)
resumes it; naming a finished one is an error. Every JSON file is strict
JSON (non-finite numbers are written as null).
"""

import csv
import datetime
import fcntl
import io
import json
import math
import os
import pathlib
import platform
import socket
import tempfile
from typing import Any, Optional

from common.errors import UserError

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.json"
HISTORY_FILE = "history.csv"
LOCK_FILE = ".lock"
MAX_NAME_LENGTH = 100


def finite(payload: Any) -> Any:
    """`payload` with every non-finite float replaced by None (JSON has no
    NaN or Infinity)."""
    if isinstance(payload, float):
        return payload if math.isfinite(payload) else None
    if isinstance(payload, dict):
        return {k: finite(v) for k, v in payload.items()}
    if isinstance(payload, (list, tuple)):
        return [finite(v) for v in payload]
    return payload


def _write_atomic(path: pathlib.Path, text: str) -> None:
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
    """Writes strict JSON so that readers see the old file or the whole new one."""
    text = json.dumps(finite(payload), indent=2, sort_keys=True, default=str,
                      allow_nan=False)
    _write_atomic(path, text + "\n")


def read_json(path: pathlib.Path) -> Any:
    with open(path) as f:
        return json.load(f)


def library_versions() -> dict[str, str]:
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
    """Raises UserError unless `name` is one plain, printable folder name:
    no path separators, not . or .., no control characters, UTF-8, at most
    MAX_NAME_LENGTH characters."""
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
    operating system's reason."""
    where = f" {e.filename}" if e.filename else ""
    return UserError(f"cannot {doing}{where}: {e.strerror or e}")


class Lock:
    """An exclusive lock on a folder (flock on its .lock file, which records
    host and PID). The kernel releases it when its owner exits, however it
    ends, so a dead owner's lock is simply taken over."""

    def __init__(self, folder: pathlib.Path, what: str):
        self.path = pathlib.Path(folder) / LOCK_FILE
        self.what = what
        self._file = None

    def acquire(self) -> "Lock":
        try:
            handle = open(self.path, "a+")
        except OSError as e:
            raise os_error(e, f"lock {self.what}") from None
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            owner = handle.read().strip() or "another process"
            handle.close()
            raise UserError(f"{self.what} {self.path.parent} is in use by {owner}; "
                            "wait for it to finish or stop it") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()} since "
                     f"{datetime.datetime.now().isoformat(timespec='seconds')}\n")
        handle.flush()
        self._file = handle
        return self

    def release(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def claim_run_dir(parent: pathlib.Path, run_name: Optional[str],
                  hparams: dict, data: dict,
                  restart: bool = False) -> tuple[pathlib.Path, bool, Lock]:
    """Returns (run folder under `parent`, resuming, its lock, held by the caller).

    Without `run_name` a fresh timestamped folder is created. With it, an
    unfinished run of the same hyperparameters and data is resumed (or, with
    `restart`, emptied and started over); a finished run, or one made with
    other hyperparameters or data, is an error rather than an overwrite.
    """
    parent = pathlib.Path(parent)
    try:
        parent.mkdir(parents=True, exist_ok=True)
        if run_name is None:
            path = new_dir(parent)
            return path, False, Lock(path, "run").acquire()
        path = parent / run_name
        # exist_ok: in a cluster another worker may create the folder (for its
        # workertemp_<i>/) at the same moment. A run has started once its
        # config.json exists; a folder without one holds nothing to resume.
        path.mkdir(exist_ok=True)
    except OSError as e:
        raise os_error(e, "create the run folder") from None
    lock = Lock(path, "run").acquire()
    try:
        if (path / METRICS_FILE).exists():
            raise UserError(f"run {path} already finished; choose another --run_name "
                            "(runs are never overwritten)")
        config_path = path / CONFIG_FILE
        if not config_path.exists():
            return path, False, lock
        try:
            previous = read_json(config_path)
            if not isinstance(previous, dict):
                raise ValueError("not an object")
        except (OSError, ValueError) as e:
            if not restart:
                raise UserError(f"{config_path} is damaged ({e}); rerun with --restart "
                                "to start the run over") from None
            previous = {}
        if restart:
            clear_run(path)
            return path, False, lock
        differs = _differences(previous.get("hparams"), hparams)
        if differs:
            raise UserError(f"run {path} was started with different hyperparameters "
                            f"({', '.join(differs)}); resume it with the same ones, "
                            "or choose another --run_name")
        differs = _differences(previous.get("data"), data)
        if differs:
            raise UserError(f"run {path} was started on other data ({', '.join(differs)}: "
                            f"{previous.get('data')}); resume it with the same "
                            "--dataset and --data_dir, or choose another --run_name")
        return path, True, lock
    except BaseException:
        lock.release()
        raise


def _differences(previous: Optional[dict], current: dict) -> list[str]:
    if previous is None:
        return []
    return sorted(k for k in set(previous) | set(current) if previous.get(k) != current.get(k))


def clear_run(path: pathlib.Path) -> None:
    """Empties an unfinished run folder (all but its lock): --restart."""
    import shutil
    for child in pathlib.Path(path).iterdir():
        if child.name == LOCK_FILE:
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def new_dir(parent: pathlib.Path, prefix: str = "") -> pathlib.Path:
    """Creates and returns a fresh timestamped folder under `parent` (with a
    suffix if another run took that second)."""
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
    redone or refilled by the resuming run)."""
    path = pathlib.Path(run_dir) / HISTORY_FILE
    if not path.exists():
        return []
    rows: dict[int, dict[str, Any]] = {}
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        for row in reader:
            try:
                if None in row or any(v is None for v in row.values()):
                    continue  # fewer or more fields than the header: torn
                epoch = int(row.pop("epoch"))
                rows[epoch] = {k: (float(v) if v not in ("", "None") else None)
                               for k, v in row.items()}
            except (ValueError, TypeError):
                continue
    return [{"epoch": e, **rows[e]} for e in sorted(rows)]


def write_history(run_dir: pathlib.Path, rows: list[dict[str, Any]]) -> None:
    """Writes history.csv atomically: one row per epoch, columns the union of
    the rows' keys (epoch first)."""
    columns = ["epoch"] + sorted({k for row in rows for k in row} - {"epoch"})
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in sorted(rows, key=lambda r: r["epoch"]):
        writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in columns})
    _write_atomic(pathlib.Path(run_dir) / HISTORY_FILE, buffer.getvalue())
