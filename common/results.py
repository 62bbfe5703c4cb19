"""Run folders and the files in them.

    results/<experiment>/<run>/
      config.json    resolved hyperparameters, flags, library versions
      history.csv    one row per finished epoch (appended across resumes)
      metrics.json   final metrics: written last, atomically
      logs/          TensorBoard: train/, validation/, test/, hparams
      backup/        BackupAndRestore state while the run is unfinished
      model/         the trained model

A new run never reuses a folder. Naming an unfinished run (`--run_name`)
resumes it; naming a finished one is an error.
"""

import csv
import datetime
import json
import os
import pathlib
import platform
import tempfile
from typing import Any, Optional

from common.errors import UserError

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.json"
HISTORY_FILE = "history.csv"


def write_json_atomic(path: pathlib.Path, payload: Any) -> None:
    """Writes JSON so that readers see the old file or the whole new one."""
    path = pathlib.Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(payload, f, indent=2, sort_keys=True, default=str)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it private; results are for reading
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


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


def claim_run_dir(parent: pathlib.Path, run_name: Optional[str],
                  hparams: dict) -> tuple[pathlib.Path, bool]:
    """Returns (run folder under `parent`, resuming).

    Without `run_name` a fresh timestamped folder is created (with a suffix if
    another run took that second). With `run_name`, an unfinished run of the
    same hyperparameters is resumed; a finished run, or one with different
    hyperparameters, is an error rather than an overwrite.
    """
    parent = pathlib.Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    if run_name is None:
        return new_dir(parent), False
    if not run_name or "/" in run_name or run_name in (".", ".."):
        raise UserError(f"bad --run_name {run_name!r}: use a plain folder name")
    path = parent / run_name
    # exist_ok: in a cluster another worker may create the folder (for its
    # workertemp_<i>/) at the same moment. A run has started once its
    # config.json exists; a folder without one holds nothing to resume.
    path.mkdir(exist_ok=True)
    if (path / METRICS_FILE).exists():
        raise UserError(f"run {path} already finished; choose another --run_name "
                        "(runs are never overwritten)")
    config_path = path / CONFIG_FILE
    if not config_path.exists():
        return path, False
    previous = read_json(config_path).get("hparams")
    if previous is not None and previous != hparams:
        changed = sorted(k for k in set(previous) | set(hparams)
                         if previous.get(k) != hparams.get(k))
        raise UserError(f"run {path} was started with different "
                        f"hyperparameters ({', '.join(changed)}); resume it "
                        "with the same ones or choose another --run_name")
    return path, True


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


def read_history(run_dir: pathlib.Path) -> list[dict[str, float]]:
    """Per-epoch rows of history.csv, one per epoch (the last write wins)."""
    path = pathlib.Path(run_dir) / HISTORY_FILE
    if not path.exists():
        return []
    rows: dict[int, dict[str, float]] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            epoch = int(row.pop("epoch"))
            rows[epoch] = {k: float(v) for k, v in row.items() if v not in ("", None)}
    return [{"epoch": e, **rows[e]} for e in sorted(rows)]
