"""Keras Tuner sweeps over an experiment's search space, each trial a run of
training/run.py's `train_run`.

Keras Tuner 1.4 checks models against Keras 3 and rejects tf_keras ones, so
the tuners here override `run_trial` (Keras Tuner's documented route for any
model): each trial is an ordinary run of the experiment, through
training/run.py's `train_run`, in its own folder:

    results/<experiment>/<sweep>/
      sweep.json          the tuner, its settings, the data and the search space
      tuner/              Keras Tuner's state: the same command resumes
      trial_<n>/          one run folder per trial (config, metrics, logs/);
                          n counts from 1, as Keras Tuner numbers trials
      trial_<n>/error.log a failed trial's traceback
      best_hparams.json   written at the end; train it with --hparams_file
      .lock               held by the process running the sweep

`tensorboard --logdir results/<experiment>/<sweep>` shows the trials side by
side in the HParams dashboard; each trial declares its own hyperparameters,
so `--logdir results` lists sweeps and single runs alike.

Distributed (common/distribute/sweep_cluster.py: Keras Tuner's three
variables, a Slurm step, or common.distribute.local_sweep): the chief holds
the sweep's .lock, writes sweep.json and serves the oracle (it loads no data
and trains nothing), then prints the best trials and writes
best_hparams.json; every worker holds workers/<id>/.lock (one process per
worker id), checks its settings against sweep.json, and runs the trials the
oracle hands it. Every process needs the same results folder.
"""

import datetime
import os
import pathlib
import shlex
import sys
import time
import traceback
from typing import Any, Optional

from absl import logging
import keras_tuner as kt
import tensorflow as tf

import experiments
from common.config import choices
from common.config.options import RunOptions, SweepTrial
from common.data import prepared
from common.distribute import strategy as strategy_lib, sweep_cluster
from common.errors import UserError
from common.runs import files
from common.runs.lock import Lock
from common.training.run import train_run

OBJECTIVE = "val_accuracy"


def search_space(experiment, config: dict) -> kt.HyperParameters:
    """The experiment's declared space, checked against its hyperparameters.

    Args:
        experiment: the experiment's module; its search_space(hp) hook
            declares the space on a kt.HyperParameters.
        config: the resolved hyperparameters; every searched name must be
            one of them.

    Returns:
        The declared kt.HyperParameters.

    Raises:
        UserError: the experiment declares no search_space, or the space
            names a hyperparameter `config` does not have.
    """
    declare = experiments.hook(experiment, "search_space")
    if declare is None:
        raise UserError(f"experiment {experiment.__name__.split('.')[-1]!r} declares no "
                        "search_space(hp)")
    space = kt.HyperParameters()
    declare(space)
    unknown = sorted(set(space.values) - set(config))
    if unknown:
        raise UserError(f"search_space names unknown hyperparameters: {', '.join(unknown)}")
    return space


def _trial_values(trial) -> dict[str, Any]:
    return {k: v for k, v in trial.hyperparameters.values.items()
            if not k.startswith("tuner/")}


class _ProjectTrials:
    """The part every tuner shares: one trial = one run of the experiment."""

    def _setup(self, experiment, options, config, strategy, sweep_dir, worker=None):
        self.experiment = experiment
        self.options = options
        self.base_config = config
        self.strategy = strategy
        self.sweep_dir = sweep_dir
        self.worker = worker
        self.failures: list[tuple[str, str]] = []

    def search(self, *args, **kwargs):
        """Keras Tuner's search; a distributed sweep's chief serves the
        oracle (serve_oracle()) instead of running trials."""
        role = sweep_cluster.sweep_role("tune", self.options.strategy)
        if role is not None and role.is_chief:
            self.save()
            serve_oracle(self.oracle, role)
            return
        try:
            super().search(*args, **kwargs)
        except kt.errors.FatalError as e:  # run_trial's own: the sweep cannot go on
            if isinstance(e.__cause__, UserError):
                raise e.__cause__ from None
            raise

    def run_trial(self, trial, *args, **kwargs):
        values = trial.hyperparameters.values
        config = {**self.base_config, **_trial_values(trial)}
        warm_start, initial_epoch = None, 0
        if "tuner/epochs" in values:  # Hyperband
            config["epochs"] = int(values["tuner/epochs"])
            previous = values.get("tuner/trial_id")
            if previous:
                warm_start = str(self.sweep_dir / trial_folder(previous))
                initial_epoch = int(values["tuner/initial_epoch"])
        name = trial_folder(trial.trial_id)
        state = SweepTrial(sweep_dir=str(self.sweep_dir), name=name, warm_start=warm_start,
                           initial_epoch=initial_epoch, worker=self.worker)
        done = _finished_elsewhere(self.sweep_dir / name, self.options.cluster_timeout)
        if done is not None:  # handed out again after a chief's restart: not rerun
            logging.info("Sweep %s, %s: finished already (%s %.4f); not run again",
                         self.sweep_dir.name, name, OBJECTIVE, done)
            return {OBJECTIVE: done}
        logging.info("Sweep %s, %s%s: %s", self.sweep_dir.name, name,
                     f" on worker {self.worker}" if self.worker else "", _trial_values(trial))
        try:
            metrics = train_run(self.experiment, self.options, config, self.strategy,
                                trial=state)
        except Exception as e:  # Keras Tuner records it and goes on; so do we.
            if isinstance(e, tf.errors.DataLossError):  # a damaged prepared copy fails
                explained = prepared.explain_data_loss(e)  # every trial: the sweep stops
                if explained is not None:
                    raise kt.errors.FatalError(str(explained)) from explained
            message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            self.failures.append((name, f"{type(e).__name__}: {message}"))
            log = self.sweep_dir / name / "error.log"
            try:
                log.parent.mkdir(parents=True, exist_ok=True)
                log.write_text(traceback.format_exc())
            except OSError:
                log = None
            logging.error("%s failed: %s%s", name, message,
                          f" (traceback in {log})" if log else "")
            raise kt.errors.FailedTrialError(message) from None
        history = metrics["history"]
        if not history or history[-1].get(OBJECTIVE) is None:
            raise kt.errors.FailedTrialError(f"{name} reported no {OBJECTIVE}")
        return {OBJECTIVE: history[-1][OBJECTIVE]}


def _finished_elsewhere(trial_dir: pathlib.Path, timeout: float) -> Optional[float]:
    """The objective of a trial whose folder another process finished (or
    finishes while this one waits for its lock: the lock is held as long as
    that process lives, so it is waited for, with a line every `timeout`
    seconds); None where the trial is to be run (or resumed) here."""
    said = 0.0
    while True:
        try:
            metrics = files.read_json(trial_dir / files.METRICS_FILE)
        except (OSError, ValueError):
            metrics = None
        if isinstance(metrics, dict) and metrics.get("status") in ("completed",
                                                                   "stopped_early"):
            history = metrics.get("history")
            if isinstance(history, list) and history and isinstance(history[-1], dict) \
                    and isinstance(history[-1].get(OBJECTIVE), (int, float)):
                return float(history[-1][OBJECTIVE])
        if not trial_dir.is_dir() or trial_dir.is_symlink():
            return None
        try:
            Lock(trial_dir, "run").acquire().release()
            return None  # nobody runs it: run or resume it here
        except UserError as e:
            if time.monotonic() - said > timeout:
                logging.info("%s is being run by another process (%s); waiting for it",
                             trial_dir.name, str(e).split(" is in use by ")[-1].split(";")[0])
                said = time.monotonic()
            time.sleep(2)


def trial_folder(trial_id: str) -> str:
    """A trial's folder, trial_<n>: n is Keras Tuner's trial id plus one, the
    number its own messages use.

    Args:
        trial_id: Keras Tuner's trial id, a zero-padded count from 0 ("00").

    Returns:
        The folder's name within the sweep's folder, e.g. "trial_1".
    """
    return f"trial_{int(trial_id) + 1}"


def serve_oracle(oracle, role: sweep_cluster.SweepRole, poll_seconds: float = 1.0) -> None:
    """Serves `oracle` to the workers until the sweep is over: Keras Tuner's
    own servicer (oracle_chief.OracleServicer) on a gRPC server bound to the
    role's address, ended once a worker has been told the sweep is over and
    no trial is running nor any worker still asking.

    Keras Tuner's start_server() checks the end every 20 s and says nothing
    when it cannot bind its port; this checks every `poll_seconds` and
    refuses an address it cannot serve.

    Args:
        oracle: the chief's oracle.
        role: the chief's role (host and port to bind).
        poll_seconds: how often the end is checked.

    Raises:
        UserError: the address cannot be bound (a port in use, a host that
            is not this machine's).
    """
    from concurrent import futures
    import grpc
    from keras_tuner.src import protos
    from keras_tuner.src.distribute import oracle_chief
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    servicer = oracle_chief.OracleServicer(oracle)
    protos.get_service_grpc().add_OracleServicer_to_server(servicer, server)
    try:
        bound = server.add_insecure_port(role.address)
    except RuntimeError:
        bound = 0
    if not bound:
        raise UserError(f"cannot serve the sweep's oracle at {role.address} (the port is in "
                        f"use, or the host is not this machine's): set "
                        f"{sweep_cluster.ORACLE_PORT_ENV} to a free port")
    server.start()
    try:
        while not (servicer.stop_triggered and oracle_chief.exit_chief(oracle)):
            time.sleep(poll_seconds)
    finally:
        server.stop(grace=5)


class _Hyperband(_ProjectTrials, kt.Hyperband):
    pass


class _Random(_ProjectTrials, kt.RandomSearch):
    pass


class _Bayesian(_ProjectTrials, kt.BayesianOptimization):
    pass


def _make_tuner(experiment, options, config, strategy, sweep_dir, space,
                role: Optional[sweep_cluster.SweepRole] = None):
    common = dict(
        hypermodel=None, objective=kt.Objective(OBJECTIVE, "max"),
        hyperparameters=space, tune_new_entries=False,
        directory=str(sweep_dir), project_name="tuner", overwrite=False,
        distribution_strategy=strategy, seed=options.seed,
        # Failures are counted here (every trial failed -> an error), not by
        # Keras Tuner stopping the sweep after three in a row.
        max_consecutive_failed_trials=10**6)
    if options.tuner == "hyperband":
        if experiments.hook(experiment, "stages") is not None:
            raise UserError(f"Hyperband continues trials epoch by epoch, which experiment "
                            f"{options.experiment!r} (several training stages) cannot; use "
                            "--tuner=random or --tuner=bayesian")
        max_epochs = options.max_epochs or config["epochs"]
        if max_epochs < 2:
            raise UserError(f"--max_epochs={max_epochs}: Hyperband needs at least 2")
        tuner = _Hyperband(max_epochs=max_epochs, factor=options.hyperband_factor, **common)
    elif options.tuner == "random":
        tuner = _Random(max_trials=options.max_trials, **common)
    elif options.tuner == "bayesian":
        tuner = _Bayesian(max_trials=options.max_trials, **common)
    else:
        raise UserError(f"unknown --tuner={options.tuner!r}; choose one of: "
                        f"{', '.join(choices.TUNERS)}")
    worker = role.tuner_id if role is not None and not role.is_chief else None
    tuner._setup(experiment, options, config, strategy, sweep_dir, worker)
    if worker is None:  # the oracle is here, not behind gRPC
        _try_defaults_first(tuner.oracle, space, config)
        _end_each_trial_once(tuner.oracle)
    return tuner


def _end_each_trial_once(oracle) -> None:
    """A restarted chief puts the trials that were running into its retry
    queue, though their workers may still finish them: a trial ended once is
    taken out of that queue, and a second end (the same trial, finished
    again by the worker it was handed to next) only frees that worker."""
    end = oracle.end_trial

    def end_trial(trial, *args, **kwargs):
        trial_id = getattr(trial, "trial_id", trial)
        # A restarted chief's display did not see the trial begin: its end
        # would fail in Keras Tuner's Display (a KeyError sent to the worker).
        display = getattr(oracle, "_display", None)
        if display is not None:
            display.trial_start.setdefault(trial_id, datetime.datetime.now())
            display.trial_number.setdefault(trial_id, int(trial_id) + 1)
        queue = oracle._retry_queue  # pylint: disable=protected-access
        while trial_id in queue:
            queue.remove(trial_id)
        if trial_id in oracle.end_order:
            recorded = oracle.trials.get(trial_id)
            completed = kt.engine.trial.TrialStatus.COMPLETED
            if getattr(trial, "status", None) == completed and (
                    recorded is None or recorded.status != completed):
                # A real result after a failed stand-in: the result counts.
                oracle.end_order.remove(trial_id)
                return end(trial, *args, **kwargs)
            for tuner_id, ongoing in list(oracle.ongoing_trials.items()):
                if ongoing.trial_id == trial_id:
                    oracle.ongoing_trials.pop(tuner_id)
            return None
        return end(trial, *args, **kwargs)

    oracle.end_trial = end_trial


def _try_defaults_first(oracle, space: kt.HyperParameters, config: dict) -> None:
    """Makes the experiment's defaults the first configuration the oracle
    draws (Hyperband, random and Bayesian all draw new configurations through
    `_random_values`), so a sweep always measures the baseline it is meant to
    beat. Keras Tuner records what it tried, so a resumed sweep does not draw
    the defaults twice."""
    defaults = {name: config[name] for name in space.values}
    for hp in space.space:
        value = defaults[hp.name]
        if isinstance(hp, kt.engine.hyperparameters.Choice):
            inside = value in hp.values
        elif getattr(hp, "min_value", None) is not None:
            inside = hp.min_value <= value <= hp.max_value
        else:
            inside = True
        if not inside:
            logging.info("Default %s=%r is outside the search space; not seeding it",
                         hp.name, value)
            return
    draw = oracle._random_values  # pylint: disable=protected-access

    def defaults_then_random():
        if not oracle._duplicate(defaults):  # pylint: disable=protected-access
            return dict(defaults)
        return draw()

    oracle._random_values = defaults_then_random  # pylint: disable=protected-access


def _sweep_dir(options, role=None) -> tuple[pathlib.Path, bool, Lock]:
    parent = pathlib.Path(options.results_dir) / options.experiment
    try:
        if options.sweep_name is None:
            path = files.new_dir(parent, prefix="sweep-")
            return path, False, Lock(path, "sweep").acquire()
        files.check_name("sweep_name", options.sweep_name)
        path = parent / options.sweep_name
        resuming = (path / "sweep.json").exists()
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise files.os_error(e, "create the sweep folder") from None
    try:
        return path, resuming, Lock(path, "sweep").acquire()
    except UserError as e:
        if role is not None:
            raise UserError(f"{e}: a sweep has one chief") from None
        raise


def _check_same_sweep(sweep_dir: pathlib.Path, description: dict) -> None:
    path = sweep_dir / "sweep.json"
    if not path.exists():
        files.write_json_atomic(path, description)
        return
    previous = _read_sweep_json(path)
    for key, what in (("settings", "tuner settings"), ("data", "data")):
        was, now = previous.get(key), description[key]
        if was != now:
            differs = ([f"{k}: {was.get(k)!r}, this command {now.get(k)!r}"
                        for k in sorted(set(was) | set(now))
                        if was.get(k) != now.get(k) or (k in was) != (k in now)]
                       if isinstance(was, dict) and isinstance(now, dict) else [repr(was)])
            raise UserError(f"sweep {sweep_dir} was started with other {what} "
                            f"({'; '.join(differs)}); resume it with the same, or use "
                            "another --sweep_name")


def _command(options, sweep_dir: pathlib.Path, epochs: int) -> str:
    """The launch.py command that trains the best configuration on the
    sweep's data for `epochs` epochs (said on the command line)."""
    python = sys.executable
    if pathlib.Path(python).is_relative_to(pathlib.Path.cwd()):
        python = os.path.relpath(python)  # .venv/bin/python, as the README writes it
    parts = [python, "launch.py", f"--experiment={options.experiment}"]
    if options.dataset:
        parts.append(f"--dataset={options.dataset}")
    if options.data_dir:
        parts.append(f"--data_dir={options.data_dir}")
    if options.results_dir != "results":
        parts.append(f"--results_dir={options.results_dir}")
    parts.append(f"--hparams_file={sweep_dir / 'best_hparams.json'}")
    parts.append(f"--epochs={epochs}")
    return " ".join(shlex.quote(p) for p in parts)


def run(experiment, options: RunOptions, config: dict,
        strategy: tf.distribute.Strategy) -> dict:
    """Runs (or resumes) a sweep over the experiment's search space: each
    trial a run folder trial_<n>/ in the sweep's folder, trained under
    `strategy`; prints the best trials and writes best_hparams.json.

    Args:
        experiment: the experiment's module (its search_space hook).
        options: the command's flags (tuner, max_trials, max_epochs,
            hyperband_factor, sweep_name, seed).
        config: the resolved hyperparameters every trial starts from.
        strategy: the strategy every trial trains under.

    Returns:
        What best_hparams.json holds.

    Raises:
        UserError: no search space, --hparams fixing a searched name, a
            sweep started with other settings or data, damaged tuner
            state, or every trial failed.
    """
    role = sweep_cluster.sweep_role(options.mode, options.strategy)
    if role is not None and not options.sweep_name:
        raise UserError("a distributed sweep needs --sweep_name, the same on the chief and "
                        "every worker")
    space = search_space(experiment, config)
    fixed = {a.partition("=")[0].strip() for a in options.hparams}
    clash = sorted(fixed & set(space.values))
    if clash:
        raise UserError(f"--hparams fixes {', '.join(clash)}, which the sweep searches; "
                        "drop it from --hparams or from the search space")
    epochs = config["epochs"]  # the experiment's (or --epochs): what the best one trains
    if options.tuner != "hyperband" and options.max_epochs:
        config = {**config, "epochs": options.max_epochs}
    settings = {"tuner": options.tuner, "max_trials": options.max_trials,
                "max_epochs": options.max_epochs, "hyperband_factor": options.hyperband_factor,
                "fixed_hparams": sorted(options.hparams), "seed": options.seed}
    data_dir = (str(pathlib.Path(options.data_dir).expanduser().resolve())
                if options.data_dir else None)
    description = {"experiment": options.experiment, "settings": settings,
                   "data": {"dataset": config["dataset"], "data_dir": data_dir},
                   "search_space": space.get_config()}
    if role is not None:
        finished = (pathlib.Path(options.results_dir) / options.experiment
                    / options.sweep_name / "best_hparams.json")
        if finished.exists():
            raise UserError(f"sweep {finished.parent} finished already (its best is in "
                            f"{finished}); use another --sweep_name for a new sweep")
    if role is not None and not role.is_chief:
        return _work(experiment, options, config, strategy, space, description, role)
    sweep_dir, resuming, lock = _sweep_dir(options, role)
    try:
        _check_same_sweep(sweep_dir, description)
        logging.info("%s sweep %s (%s, %s); to resume after an interruption: "
                     "--sweep_name=%s", "Resuming" if resuming else "Starting", sweep_dir,
                     options.tuner, "oracle only: the workers train"
                     if role is not None else strategy_lib.strategy_name(strategy),
                     sweep_dir.name)
        return _search(experiment, options, config, strategy, sweep_dir, space, epochs,
                       role)
    finally:
        lock.release()


def _work(experiment, options, config, strategy, space, description: dict,
          role: sweep_cluster.SweepRole) -> dict:
    """A worker of a distributed sweep: waits for the chief's sweep.json,
    checks its own settings against it, runs the trials the oracle hands it
    until the oracle says the sweep is over."""
    sweep_dir = pathlib.Path(options.results_dir) / options.experiment / options.sweep_name
    folder = sweep_dir / "workers" / role.tuner_id
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise files.os_error(e, "create the worker's folder") from None
    lock = Lock(folder, f"worker {role.tuner_id} of sweep").acquire()
    try:
        chief = _wait_for_sweep(sweep_dir, options.cluster_timeout, role)
        differs = _description_differences(chief, description)
        if differs:
            raise UserError(f"worker {role.tuner_id} was started with other settings than "
                            f"the sweep's chief ({'; '.join(differs)}); start it with the "
                            "chief's command")
        from keras_tuner.src.distribute import oracle_client
        oracle_client.TIMEOUT = options.cluster_timeout  # then one line, not an hour's wait
        tuner = _checked_tuner(experiment, options, config, strategy, sweep_dir, space, role)
        import grpc
        try:
            tuner.search(verbose=0)
        except grpc.RpcError as e:
            code = e.code() if hasattr(e, "code") else None
            if code in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE):
                raise UserError(f"worker {role.tuner_id} lost the sweep's oracle at "
                                f"{role.address} ({code.name} after "
                                f"{options.cluster_timeout:.0f} s, --cluster_timeout): start "
                                "(or restart) the chief with the same command, then this "
                                "worker again") from None
            details = e.details() if hasattr(e, "details") else str(e)
            raise UserError(f"the sweep's oracle at {role.address} failed a request of worker "
                            f"{role.tuner_id} ({getattr(code, 'name', code)}: "
                            f"{str(details).splitlines()[0] if details else 'no details'}); "
                            "see the chief's output, then start this worker again") from None
        ran = sorted(t.name for t in sweep_dir.glob("trial_*")
                     if _worker_of(t) == role.tuner_id)
        logging.info("Worker %s finished: the oracle has no more trials (this worker ran "
                     "%s)", role.tuner_id, ", ".join(ran) or "none")
        return {"sweep": str(sweep_dir), "worker": role.tuner_id, "trials": ran}
    finally:
        lock.release()


def _worker_of(trial_dir: pathlib.Path) -> Optional[str]:
    try:
        config = files.read_json(trial_dir / files.CONFIG_FILE)
        return (config.get("trial") or {}).get("worker")
    except (OSError, ValueError, AttributeError):
        return None


def _wait_for_sweep(sweep_dir: pathlib.Path, timeout: float,
                    role: sweep_cluster.SweepRole) -> dict:
    """sweep.json as the chief wrote it, waited for up to `timeout` s."""
    path = sweep_dir / "sweep.json"
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise UserError(f"no chief started sweep {sweep_dir} within {timeout:.0f} s "
                            f"(--cluster_timeout; its oracle would be at {role.address}): start "
                            f"the same command with {sweep_cluster.TUNER_ID_ENV}=chief")
        time.sleep(1)
    return _read_sweep_json(path)


def _read_sweep_json(path: pathlib.Path) -> dict:
    """A sweep's sweep.json, a JSON object, or UserError saying it is damaged."""
    try:
        previous = files.read_json(path)
        if not isinstance(previous, dict):
            raise ValueError("not an object")
    except (OSError, ValueError) as e:
        raise UserError(f"{path} is damaged ({e}); use another --sweep_name") from None
    return previous


def _description_differences(chief: dict, mine: dict) -> list[str]:
    """Each setting where a worker's command differs from the chief's, as
    "settings.max_trials: chief 4, this worker 8"."""
    differs = []
    for key in sorted(set(chief) | set(mine)):
        a, b = chief.get(key), mine.get(key)
        if isinstance(a, dict) and isinstance(b, dict) and key != "search_space":
            differs += [f"{key}.{k}: chief {a.get(k)!r}, this worker {b.get(k)!r}"
                        for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
        elif a != b:
            differs.append(f"{key} differs" if key == "search_space"
                           else f"{key}: chief {a!r}, this worker {b!r}")
    return differs


def _checked_tuner(experiment, options, config, strategy, sweep_dir, space, role):
    """_make_tuner(), with Keras Tuner's failure to reload its state (in
    tuner/) as one line."""
    try:
        return _make_tuner(experiment, options, config, strategy, sweep_dir, space, role)
    except (ValueError, KeyError, TypeError, OSError) as e:
        raise UserError(f"the Keras Tuner state in {sweep_dir / 'tuner'} is damaged "
                        f"({type(e).__name__}: {e}); use another --sweep_name") from None


def _search(experiment, options, config, strategy, sweep_dir, space, epochs: int,
            role: Optional[sweep_cluster.SweepRole] = None) -> dict:
    tuner = _checked_tuner(experiment, options, config, strategy, sweep_dir, space, role)
    try:
        # Keras Tuner's own display numbers trials its way and prints failed
        # trials' tracebacks: the project's lines say it instead.
        tuner.search(verbose=0)
    except RuntimeError as e:
        logging.error("Keras Tuner stopped the sweep: %s", str(e).splitlines()[0])
    completed = [t for t in tuner.oracle.trials.values()
                 if t.status == kt.engine.trial.TrialStatus.COMPLETED]
    if not completed:
        first = tuner.failures[0] if tuner.failures else _first_failure(tuner)
        raise UserError(f"every trial of sweep {sweep_dir.name} failed; first failure "
                        f"({first[0]}): {first[1]} (tracebacks in "
                        f"{sweep_dir}/trial_*/error.log)")
    best_trials = [t for t in tuner.oracle.get_best_trials(num_trials=len(completed))
                   if t.status == kt.engine.trial.TrialStatus.COMPLETED
                   and t.score is not None][:5]
    print(format_best(best_trials, config))
    best = best_trials[0]
    # The sweep's epochs are its budget, not a finding: the best configuration
    # trains the experiment's epochs (on the printed command line), and the
    # file says what the trial trained (format_best's epochs column).
    found_at = int(best.hyperparameters.values.get("tuner/epochs", config["epochs"]))
    best_hparams = _trial_values(best)
    payload = {
        "experiment": options.experiment,
        "sweep": str(sweep_dir),
        "trial": trial_folder(best.trial_id),
        "objective": {"name": OBJECTIVE, "value": best.score},
        "hparams": best_hparams,
        "data": {"dataset": config["dataset"], "data_dir": options.data_dir},
        "trials_completed": len(completed),
        "trials_failed": sum(1 for t in tuner.oracle.trials.values()
                             if t.status == kt.engine.trial.TrialStatus.FAILED),
        "found_at_epochs": found_at,
        "epochs": epochs,
        "train_it_with": _command(options, sweep_dir, epochs),
    }
    files.write_json_atomic(sweep_dir / "best_hparams.json", payload)
    logging.info("Best %s: %s %.4f after %d epoch(s); train it for %d epoch(s) (the "
                 "experiment's; change --epochs for more or fewer) with: %s", payload["trial"],
                 OBJECTIVE, best.score, found_at, epochs, payload["train_it_with"])
    return payload


def _first_failure(tuner) -> tuple[str, str]:
    for trial in tuner.oracle.trials.values():
        if trial.message:
            lines = [line for line in trial.message.strip().splitlines() if line.strip()]
            return trial_folder(trial.trial_id), lines[-1] if lines else "failed"
    return "?", "no trial ran"


def format_best(trials, config: dict) -> str:
    """The best trials as a text table for the sweep's summary.

    Args:
        trials: completed Keras Tuner trials with a score, in the order the
            rows are wanted (best first).
        config: the hyperparameters every trial started from; its "epochs"
            is shown for a trial whose values have no "tuner/epochs" (all
            but Hyperband's).

    Returns:
        "Best trials:" and a table: trial folder, the objective's score
        (four decimals), epochs, then every searched hyperparameter (sorted
        by name; floats to four significant digits), columns padded to
        their widest cell.
    """
    names = sorted({k for t in trials for k in _trial_values(t)})
    header = ["trial", OBJECTIVE, "epochs"] + names
    rows = []
    for t in trials:
        values = t.hyperparameters.values
        epochs = values.get("tuner/epochs", config.get("epochs", "-"))
        rows.append([trial_folder(t.trial_id), f"{t.score:.4f}", str(epochs)]
                    + [_short(values.get(n)) for n in names])
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(header, widths)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)) for r in rows]
    return "Best trials:\n" + "\n".join(lines)


def _short(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
