"""A run folder's life: claimed (locked), config.json, TensorBoard HParams,
then metrics.json with the outcome, the lock released.

A new run never reuses a folder. Naming an unfinished run (`--run_name`)
resumes it; naming a finished one is an error. Only the chief of a cluster
writes the run folder; the other workers keep their temporary files in
workertemp_<index>/ inside it (the convention of tf_keras'
BackupAndRestore) and delete them at the end.
"""

import dataclasses
import os
import pathlib
import re
import shutil
import time
from typing import Any, Optional

from absl import logging
import tensorflow as tf
from tensorboard.plugins.hparams import api as hp

from common.config.options import HPARAM_FLAGS, RunOptions, SweepTrial
from common.data import image_folder
from common.distribute import strategy as strategy_lib
from common.errors import RunFailed, UserError
from common.runs import files
from common.runs.lock import Lock

STATUSES = ("completed", "stopped_early", "failed")


def claim_run_dir(parent: pathlib.Path, run_name: Optional[str],
                  hparams: dict, data: dict,
                  restart: bool = False,
                  how: Optional[dict] = None, label: str = "") -> tuple[pathlib.Path, bool, Lock]:
    """Returns (run folder under `parent`, resuming, its lock, held by the caller).

    Without `run_name` a fresh timestamped folder is created. With it, an
    unfinished run of the same hyperparameters and data is resumed (or, with
    `restart`, emptied and started over); a finished run, or one made with
    other hyperparameters or data, is an error rather than an overwrite.
    A named folder without config.json (new, or made by another worker) is
    a new run; a config.json without "hparams" or "data" matches any.

    Args:
        parent: the folder of the experiment's runs (created if missing).
        run_name: the run folder's name (--run_name), or None for a fresh
            timestamped one.
        hparams: the resolved hyperparameters; a resumed run's config.json
            "hparams" must equal them key by key.
        data: dataset, data_dir and source; a resumed run's config.json
            "data" must equal them key by key.
        restart: empty a named, unfinished run that has a config.json (all
            but its lock, even a damaged config.json) and start it over.
        label: what the run is, for a new folder's name without
            `run_name`: <label>-<timestamp> (default_label()).
        how: how the run is made beyond its hyperparameters and data:
            {"strategy", "num_replicas", "seed"}; a resumed run's config.json
            ("strategy", "num_replicas", flags' "seed") must say the same.

    Returns:
        (run_dir, resuming, lock): the run folder (pathlib.Path), whether an
        unfinished run is continued (bool), and the Lock on the folder, held;
        the caller releases it.

    Raises:
        UserError: the run already finished (runs are never overwritten);
            its config.json is damaged and `restart` is not set; it was
            started with other hyperparameters or data, or under another
            strategy, replica count or seed; another process holds its lock;
            or the folder cannot be created.
    """
    parent = pathlib.Path(parent)
    try:
        parent.mkdir(parents=True, exist_ok=True)
        if run_name is None:
            path = files.new_dir(parent, prefix=f"{label}-" if label else "")
            return path, False, Lock(path, "run").acquire()
        path = parent / run_name
        # exist_ok: in a cluster another worker may create the folder (for its
        # workertemp_<i>/) at the same moment. A run has started once its
        # config.json exists; a folder without one holds nothing to resume.
        path.mkdir(exist_ok=True)
    except OSError as e:
        raise files.os_error(e, "create the run folder") from None
    check_not_a_link(path)
    finished = UserError(f"run {path} already finished; choose another --run_name "
                         "(runs are never overwritten)")
    if os.path.lexists(path / files.METRICS_FILE):
        raise finished  # before the lock writes anything into a finished run
    lock = Lock(path, "run").acquire()
    try:
        if os.path.lexists(path / files.METRICS_FILE):  # finished meanwhile
            raise finished
        config_path = path / files.CONFIG_FILE
        if not config_path.exists():
            return path, False, lock
        try:
            previous = files.read_json(config_path)
            if not isinstance(previous, dict):
                raise ValueError("not an object")
            for key in ("hparams", "data"):
                if not isinstance(previous.get(key, {}), dict):
                    raise ValueError(f"its {key!r} is not an object")
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
        before = previous.get("data")
        if isinstance(before, dict) and ("file_set" in before or "file_set" in data):
            change = image_folder.describe_change(before.get("file_set"),
                                                  data.get("file_set"))
            if change:
                raise _files_changed(path, change)
            before = {k: v for k, v in before.items() if k != "file_set"}
            data = {k: v for k, v in data.items() if k != "file_set"}
        differs = _differences(before, data)
        if differs:
            raise UserError(f"run {path} was started on other data ({', '.join(differs)}: "
                            f"{previous.get('data')}); resume it with the same "
                            "--dataset and --data_dir, or choose another --run_name")
        if how:
            made = {"strategy": previous.get("strategy"),
                    "num_replicas": previous.get("num_replicas"),
                    "seed": (previous.get("flags") or {}).get("seed")
                    if isinstance(previous.get("flags"), dict) else None}
            differs = [k for k in how if made.get(k) is not None and made[k] != how[k]]
            if differs:
                was = ", ".join(f"{k} {made[k]!r}" for k in differs)
                now = ", ".join(f"{k} {how[k]!r}" for k in differs)
                raise UserError(f"run {path} was started with {was}; this command has {now}: "
                                "a resumed run must be made the same way throughout (its "
                                "records would disagree); resume it with the same --strategy, "
                                "--num_cpu_devices and --seed, or choose another --run_name")
        return path, True, lock
    except BaseException:
        lock.release()
        raise


def _files_changed(path: pathlib.Path, change: str) -> UserError:
    """The one line that refuses to resume the run `path` on changed files.

    Args:
        path: the run folder.
        change: image_folder.describe_change()'s words.

    Returns:
        The UserError to raise.
    """
    return UserError(f"run {path} was started on other files: the image folder changed "
                     f"since ({change}); a resumed run must see the same files, or its "
                     "splits change (restore them, or choose another --run_name)")


def check_files_before_loading(run_dir: pathlib.Path, data_dir: Optional[str]) -> None:
    """Refuses to resume the unfinished run `run_dir` on an image folder
    whose files changed since it started, before the folder is prepared
    (minutes for a large one): claim_run_dir() makes the same check after.

    Only the folder's listing is read (paths, sizes, modification times:
    image_folder.file_set()). Anything else (no such run, a finished or
    damaged one, no recorded files) is left to claim_run_dir().

    Args:
        run_dir: the run folder --run_name names.
        data_dir: the image folder (--data_dir), or None.

    Raises:
        UserError: the files changed, in the words of claim_run_dir(); the
            folder cannot be listed (image_folder.scan()).
    """
    if not data_dir or run_dir.is_symlink() or os.path.lexists(run_dir / files.METRICS_FILE):
        return
    try:
        previous = files.read_json(run_dir / files.CONFIG_FILE)
    except (OSError, ValueError):
        return
    before = previous.get("data") if isinstance(previous, dict) else None
    if not isinstance(before, dict) or "file_set" not in before:
        return
    folder = pathlib.Path(data_dir).expanduser().resolve()
    if before.get("data_dir") not in (None, str(folder)) or not folder.is_dir():
        return  # other data: claim_run_dir() says so
    change = image_folder.describe_change(before["file_set"],
                                          image_folder.file_set(image_folder.scan(folder)))
    if change:
        raise _files_changed(run_dir, change)


LABEL_LENGTH = 60       # characters of a default run name before its timestamp


def default_label(options: RunOptions, config: dict) -> str:
    """What a run is, for its default folder name (and so TensorBoard's run
    and HParams trial names): the dataset (an image folder's folder name),
    then every hyperparameter set on the command line, as name=value.

    Args:
        options: the command's flags: --hparams and the dedicated
            hyperparameter flags (--epochs, --batch_size, ...) that were
            given.
        config: the resolved hyperparameters (its dataset).

    Returns:
        E.g. "fashion_mnist-epochs=5-learning_rate=0.01", characters other
        than letters, digits and ._=+- replaced by _, at most LABEL_LENGTH
        characters.
    """
    dataset = str(config.get("dataset", ""))
    if options.data_dir and dataset == "image_folder":
        dataset = pathlib.Path(options.data_dir).expanduser().name or dataset
    given = [f"{name}={getattr(options, name)}" for name in HPARAM_FLAGS
             if name != "dataset" and getattr(options, name) is not None]
    given += [a.strip() for a in options.hparams if a.strip()]
    text = "-".join([dataset, *given])
    text = re.sub(r"[^A-Za-z0-9._=+-]", "_", text).strip("._-") or "run"
    return text[:LABEL_LENGTH].rstrip("._-=")


def _differences(previous: Optional[dict], current: dict) -> list[str]:
    if previous is None:
        return []
    return sorted(k for k in set(previous) | set(current) if previous.get(k) != current.get(k))


def check_not_a_link(run_dir: pathlib.Path) -> None:
    """Refuses a run folder that is a symbolic link: what a run writes must
    stay where its results folder says.

    Args:
        run_dir: the run folder.

    Raises:
        UserError: `run_dir` is a symbolic link.
    """
    if pathlib.Path(run_dir).is_symlink():
        raise UserError(f"run {run_dir} is a symbolic link; a run folder must be a folder "
                        "of its own (copy the run instead of linking it)")


def clear_run(path: pathlib.Path) -> None:
    """Empties an unfinished run folder (all but its lock): --restart.

    Folders are removed with their contents; files and symbolic links are
    unlinked (a link's target is left alone).

    Args:
        path: the run folder to empty.

    Raises:
        OSError: an entry cannot be removed.
    """
    for child in pathlib.Path(path).iterdir():
        if child.name == files.LOCK_FILE:
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


@dataclasses.dataclass
class RunFolder:
    """The folder of one run and this process's claim on it.

    Attributes:
        experiment: the experiment's name.
        options: the command's flags (config.json's "flags").
        config: the run's resolved hyperparameters.
        strategy: the strategy the run trains under.
        data: dataset, data_dir and source: what a resume must match.
        run_dir: the run folder.
        write_dir: where this process writes: the run folder, or
            workertemp_<i>/ inside it on a cluster's other workers.
        resuming: whether an unfinished run was found and is continued.
        lock: the chief's lock on the run folder (None on other workers).
        started_at: time.perf_counter() when the folder was claimed.
        trial: the sweep's state for a sweep's trial, else None.
    """
    experiment: str
    options: RunOptions
    config: dict
    strategy: tf.distribute.Strategy
    data: dict
    run_dir: pathlib.Path
    write_dir: pathlib.Path
    resuming: bool = False
    lock: Optional[Lock] = None
    started_at: float = 0.0
    trial: Optional[SweepTrial] = None

    @property
    def is_chief(self) -> bool:
        """Whether this process writes the run's results (distribute/strategy.py)."""
        return strategy_lib.is_chief(self.strategy)

    @classmethod
    def claim(cls, experiment: str, options: RunOptions, config: dict,
              strategy: tf.distribute.Strategy, data: dict,
              extra_config: Optional[dict] = None,
              trial: Optional[SweepTrial] = None) -> "RunFolder":
        """Claims the run folder (the chief: locked, config.json and the
        HParams summary written) or finds it (the other workers).

        Args:
            experiment: the experiment's name.
            options: the command's flags; results_dir, run_name and restart
                say which folder (a sweep's trial: `trial` does).
            config: the resolved hyperparameters (a resume must match them).
            strategy: the run's strategy (which process is the chief).
            data: dataset, data_dir and source (a resume must match them).
            extra_config: more entries for config.json (class names, ...).
            trial: a sweep's trial: its folder is trial.name inside
                trial.sweep_dir, never restarted, and config.json records
                the trial.

        Returns:
            The claimed RunFolder; the caller releases it (release()).

        Raises:
            UserError: the run already finished, was started with other
                hyperparameters or data, is damaged, is locked by another
                process, or its folder cannot be written.
        """
        if trial is not None:
            parent, run_name, restart = pathlib.Path(trial.sweep_dir), trial.name, False
        else:
            parent = pathlib.Path(options.results_dir) / experiment
            run_name, restart = options.run_name, options.restart
        label = strategy_lib.strategy_name(strategy)
        replicas = strategy.num_replicas_in_sync
        if not strategy_lib.is_chief(strategy):
            run_dir = parent / run_name
            check_not_a_link(run_dir)
            if (run_dir / files.METRICS_FILE).exists():
                raise UserError(f"run {run_dir} already finished; choose another --run_name "
                                "(runs are never overwritten)")
            index = strategy_lib.task_id(strategy)
            write_dir = run_dir / f"workertemp_{index}"
            try:
                write_dir.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise files.os_error(e, "create the worker folder") from None
            logging.info("Worker %d is not the chief: the chief writes the run's results; "
                         "this worker keeps its temporary files in %s", index, write_dir)
            return cls(experiment, options, config, strategy, data, run_dir, write_dir,
                       started_at=time.perf_counter(), trial=trial)
        run_dir, resuming, lock = claim_run_dir(
            parent, run_name, config, data, restart=restart,
            how={"strategy": label, "num_replicas": replicas, "seed": options.seed},
            label=default_label(options, config))
        folder = cls(experiment, options, config, strategy, data, run_dir, run_dir,
                     resuming, lock, time.perf_counter(), trial)
        if trial is not None:  # the sweep is what resumes
            logging.info("%s %s (%s, %d replica(s)); to resume the sweep after an "
                         "interruption: --sweep_name=%s", "Resuming" if resuming else
                         "Starting", run_dir, label, replicas, parent.name)
        else:
            logging.info("%s run %s (%s, %d replica(s)); to resume after an interruption: "
                         "--run_name=%s", "Resuming" if resuming else "Starting", run_dir,
                         label, replicas, run_dir.name)
        try:
            if not (run_dir / files.CONFIG_FILE).exists():
                files.write_json_atomic(run_dir / files.CONFIG_FILE, {
                    "experiment": experiment,
                    "hparams": config,
                    "data": data,
                    "flags": dataclasses.asdict(options),
                    **({"trial": trial.as_dict()} if trial is not None else {}),
                    "num_replicas": replicas,
                    "strategy": label,
                    "versions": files.library_versions(),
                    **(extra_config or {}),
                })
                write_hparams(run_dir, config, session_name(
                    experiment, run_dir.name if trial is None
                    else f"{parent.name}/{run_dir.name}"))
        except OSError as e:
            lock.release()
            raise files.os_error(e, "write to the run folder") from None
        except BaseException:
            lock.release()
            raise
        return folder

    def release(self) -> None:
        """Releases the lock on the run folder (a no-op without one)."""
        if self.lock is not None:
            self.lock.release()

    def finish(self, status: str, metrics: dict[str, Any]) -> dict[str, Any]:
        """Writes metrics.json (last, atomically) with the run's status and
        the figures common to every run; drops what resuming needed.

        The figures common to every run are read from this process's
        history.csv and the run's config and strategy: experiment, run, status,
        dataset, data_source, strategy, num_replicas, global_batch_size, epochs
        (rows of history.csv), seconds_per_epoch, train_images_per_second (the
        median of the epochs' images_per_second after the first, the upper one
        of an even count; the only one if there is one), seconds_this_invocation
        and history; `metrics` is merged last and overrides them.

        On the chief, metrics.json is written and the run folder's backup/ and
        stages/ are removed (a failed run under MultiWorkerMirroredStrategy
        keeps backup/). On another worker nothing is written and its
        workertemp_<i>/ folder is removed.

        Args:
            status: one of STATUSES: "completed", "stopped_early" or "failed".
            metrics: the run's own figures (test_accuracy, test_loss, models,
                ...), JSON-like.

        Returns:
            The payload: the dict metrics.json holds (or would hold, on a worker
            that is not the chief).

        Raises:
            AssertionError: `status` is not one of STATUSES.
            OSError: metrics.json cannot be written.
        """
        assert status in STATUSES, status
        history = files.read_history(self.write_dir)
        seconds = [row.get("wall_seconds") for row in history]
        rates = [row["images_per_second"] for row in history
                 if row.get("images_per_second") is not None]
        payload = {
            "experiment": self.experiment,
            "run": self.run_dir.name,
            "status": status,
            "dataset": self.config["dataset"],
            "data_source": self.data.get("source"),
            "strategy": strategy_lib.strategy_name(self.strategy),
            "num_replicas": self.strategy.num_replicas_in_sync,
            "global_batch_size": self.config["batch_size"],
            "epochs": len(history),
            "seconds_per_epoch": seconds,
            # Steady state: the first epoch includes graph tracing.
            "train_images_per_second": (sorted(rates[1:] or rates)[len(rates[1:] or rates) // 2]
                                        if rates else None),
            "seconds_this_invocation": time.perf_counter() - self.started_at,
            "history": history,
            **metrics,
        }
        if not self.is_chief:
            shutil.rmtree(self.write_dir, ignore_errors=True)
            return payload
        files.write_json_atomic(self.run_dir / files.METRICS_FILE, payload)
        # Only now is the run safe on disk: drop what resuming needed. A
        # completed run's final evaluation had every worker take part, so no
        # worker still writes its backup copy; a failed one stopped without
        # that barrier, and under several workers keeps backup/ rather than
        # pull it from under a worker's last save.
        several_workers = isinstance(self.strategy, tf.distribute.MultiWorkerMirroredStrategy)
        keep_backup = status == "failed" and several_workers
        for leftover in ("stages",) if keep_backup else ("backup", "stages"):
            shutil.rmtree(self.run_dir / leftover, ignore_errors=True)
        return payload

    def fail(self, reason: str, metrics: dict[str, Any]) -> None:
        """Records a failed run (metrics.json, status failed) and raises
        RunFailed with `reason`.

        Args:
            reason: why the run failed, one line; metrics.json's "failure".
            metrics: more figures for metrics.json; test_accuracy and test_loss
                are None unless `metrics` sets them.

        Raises:
            RunFailed: always, after finish("failed", ...): "run <run_dir>
                failed: <reason>".
        """
        self.finish("failed", {"failure": reason, "test_accuracy": None, "test_loss": None,
                               **metrics})
        raise RunFailed(f"run {self.run_dir} failed: {reason}")


def session_name(experiment: str, run: str) -> str:
    """A run's name in TensorBoard's HParams dashboard (its Trial ID): what
    tells the runs apart first, since the dashboard's column shows only the
    start of it, then the experiment: "fashion_mnist-epochs=5-20261202-101500
    (<experiment>)", "sweep-1/trial_3 (<experiment>)".

    Args:
        experiment: the experiment's name.
        run: the run folder's name, or "<sweep>/<trial>" for a sweep's trial.

    Returns:
        "<run> (<experiment>)".
    """
    return f"{run} ({experiment})"


def write_hparams(run_dir: pathlib.Path, config: dict, trial_id: str) -> None:
    """The run's hyperparameters for TensorBoard's HParams dashboard, under
    a trial id that names the experiment; its metrics are the epoch_*
    scalars of train/, validation/ and test/.

    Writes an HParams summary to <run_dir>/logs. Only hyperparameters whose
    value is a bool, int, float or str are recorded; others are left out.

    Args:
        run_dir: the run folder.
        config: the resolved hyperparameters.
        trial_id: the name the dashboard shows for the run
            (session_name(): "<run> (<experiment>)", or "<sweep>/<trial>
            (<experiment>)").
    """
    values = {k: v for k, v in config.items() if isinstance(v, (bool, int, float, str))}
    writer = tf.summary.create_file_writer(str(run_dir / "logs"))
    with writer.as_default():
        hp.hparams(values, trial_id=trial_id)
    writer.close()


def write_test_scalars(write_dir: pathlib.Path, step: int, test: dict) -> None:
    """Test figures beside train/ and validation/, so the HParams dashboard
    lists them as metrics of the run.

    Writes the scalars epoch_loss and epoch_accuracy (those not None) to
    <write_dir>/logs/test.

    Args:
        write_dir: where this process writes (RunFolder.write_dir).
        step: the step to record them at (the number of epochs trained).
        test: the test figures: {"loss": float, "accuracy": float, ...};
            other keys are ignored.
    """
    writer = tf.summary.create_file_writer(str(write_dir / "logs" / "test"))
    with writer.as_default():
        for name in ("loss", "accuracy"):
            if test.get(name) is not None:
                tf.summary.scalar(f"epoch_{name}", test[name], step=step)
    writer.close()
