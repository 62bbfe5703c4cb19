"""A run folder's life: claimed (locked), config.json, TensorBoard HParams,
then metrics.json with the outcome, the lock released.

Only the chief of a cluster writes the run folder; the other workers keep
their temporary files in workertemp_<index>/ inside it (the convention of
tf_keras' BackupAndRestore) and delete them at the end.
"""

import dataclasses
import pathlib
import shutil
import time
from typing import Any, Optional

from absl import logging
import tensorflow as tf
from tensorboard.plugins.hparams import api as hp

from common import results, strategy as strategy_lib
from common.errors import RunFailed, UserError
from common.options import RunOptions

STATUSES = ("completed", "stopped_early", "failed")


@dataclasses.dataclass
class RunFolder:
    """The folder of one run and the process's claim on it."""
    experiment: str
    options: RunOptions
    config: dict
    strategy: tf.distribute.Strategy
    data: dict                          # dataset, data_dir, source: what resume must match
    run_dir: pathlib.Path
    write_dir: pathlib.Path             # the run folder, or workertemp_<i>/ on other workers
    resuming: bool = False
    lock: Optional[results.Lock] = None
    started_at: float = 0.0

    @property
    def is_chief(self) -> bool:
        return strategy_lib.is_chief(self.strategy)

    @classmethod
    def claim(cls, experiment: str, options: RunOptions, config: dict,
              strategy: tf.distribute.Strategy, data: dict,
              extra_config: Optional[dict] = None) -> "RunFolder":
        """Claims the run folder (the chief; locked, config.json written) or
        finds it (other workers)."""
        parent = (pathlib.Path(options.run_parent) if options.run_parent
                  else pathlib.Path(options.results_dir) / experiment)
        label = strategy_lib.strategy_name(strategy)
        replicas = strategy.num_replicas_in_sync
        if not strategy_lib.is_chief(strategy):
            run_dir = parent / options.run_name
            if (run_dir / results.METRICS_FILE).exists():
                raise UserError(f"run {run_dir} already finished; choose another --run_name "
                                "(runs are never overwritten)")
            index = strategy_lib.task_id(strategy)
            write_dir = run_dir / f"workertemp_{index}"
            try:
                write_dir.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise results.os_error(e, "create the worker folder") from None
            logging.info("Worker %d is not the chief: the chief writes the run's results; "
                         "this worker keeps its temporary files in %s", index, write_dir)
            return cls(experiment, options, config, strategy, data, run_dir, write_dir,
                       started_at=time.perf_counter())
        run_dir, resuming, lock = results.claim_run_dir(
            parent, options.run_name, config, data, restart=options.restart)
        folder = cls(experiment, options, config, strategy, data, run_dir, run_dir,
                     resuming, lock, time.perf_counter())
        if options.run_parent:  # a trial of a sweep: the sweep is what resumes
            logging.info("%s %s (%s, %d replica(s)); to resume the sweep after an "
                         "interruption: --sweep_name=%s", "Resuming" if resuming else
                         "Starting", run_dir, label, replicas, parent.name)
        else:
            logging.info("%s run %s (%s, %d replica(s)); to resume after an interruption: "
                         "--run_name=%s", "Resuming" if resuming else "Starting", run_dir,
                         label, replicas, run_dir.name)
        try:
            if not (run_dir / results.CONFIG_FILE).exists():
                results.write_json_atomic(run_dir / results.CONFIG_FILE, {
                    "experiment": experiment,
                    "hparams": config,
                    "data": data,
                    "flags": dataclasses.asdict(options),
                    "num_replicas": replicas,
                    "strategy": label,
                    "versions": results.library_versions(),
                    **(extra_config or {}),
                })
                write_hparams(run_dir, config, f"{experiment}/{run_dir.name}"
                              if not options.run_parent else
                              f"{experiment}/{parent.name}/{run_dir.name}")
        except OSError as e:
            lock.release()
            raise results.os_error(e, "write to the run folder") from None
        return folder

    def release(self) -> None:
        if self.lock is not None:
            self.lock.release()

    def finish(self, status: str, metrics: dict[str, Any]) -> dict[str, Any]:
        """Writes metrics.json (last, atomically) with the run's status and
        the figures common to every run; drops what resuming needed."""
        assert status in STATUSES, status
        history = results.read_history(self.write_dir)
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
        results.write_json_atomic(self.run_dir / results.METRICS_FILE, payload)
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
        RunFailed with `reason`."""
        self.finish("failed", {"failure": reason, "test_accuracy": None, "test_loss": None,
                               **metrics})
        raise RunFailed(f"run {self.run_dir} failed: {reason}")


def write_hparams(run_dir: pathlib.Path, config: dict, trial_id: str) -> None:
    """The run's hyperparameters for TensorBoard's HParams dashboard, under
    a trial id that names the experiment; its metrics are the epoch_*
    scalars of train/, validation/ and test/."""
    values = {k: v for k, v in config.items() if isinstance(v, (bool, int, float, str))}
    writer = tf.summary.create_file_writer(str(run_dir / "logs"))
    with writer.as_default():
        hp.hparams(values, trial_id=trial_id)
    writer.close()


def write_test_scalars(write_dir: pathlib.Path, step: int, test: dict) -> None:
    """Test figures beside train/ and validation/, so the HParams dashboard
    lists them as metrics of the run."""
    writer = tf.summary.create_file_writer(str(write_dir / "logs" / "test"))
    with writer.as_default():
        for name in ("loss", "accuracy"):
            if test.get(name) is not None:
                tf.summary.scalar(f"epoch_{name}", test[name], step=step)
    writer.close()
