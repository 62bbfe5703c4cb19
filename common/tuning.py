"""Keras Tuner sweeps over an experiment's search space, on the project's runner.

Keras Tuner 1.4 checks models against Keras 3 and rejects tf_keras ones, so
the tuners here override `run_trial` (Keras Tuner's documented route for any
model): each trial is an ordinary run of the experiment, through
`training.execute`, in its own folder:

    results/<experiment>/<sweep>/
      sweep.json          the tuner, its settings and the search space
      tuner/              Keras Tuner's state: the same command resumes
      trial_<id>/         one run folder per trial (config, metrics, logs/)
      logs/               the sweep's HParams configuration for TensorBoard
      best_hparams.json   written at the end; train it with --hparams_file

`tensorboard --logdir results/<experiment>/<sweep>` shows the trials side by
side in the HParams dashboard.
"""

import dataclasses
import pathlib
from typing import Any

from absl import logging
import keras_tuner as kt
import tensorflow as tf
from tensorboard.plugins.hparams import api as hp_api

from common import results, strategy as strategy_lib
from common.errors import UserError

TUNERS = ("hyperband", "random", "bayesian")
OBJECTIVE = "val_accuracy"


def search_space(experiment, config: dict) -> kt.HyperParameters:
    """The experiment's declared space, checked against its hyperparameters."""
    if not hasattr(experiment, "search_space"):
        raise UserError(f"experiment {experiment.__name__.split('.')[-1]!r} declares no "
                        "search_space")
    space = kt.HyperParameters()
    experiment.search_space(space)
    unknown = sorted(set(space.values) - set(config))
    if unknown:
        raise UserError(f"search_space names unknown hyperparameters: {', '.join(unknown)}")
    return space


def _trial_values(trial) -> dict[str, Any]:
    return {k: v for k, v in trial.hyperparameters.values.items()
            if not k.startswith("tuner/")}


class _ProjectTrials:
    """The part every tuner shares: one trial = one run of the experiment."""

    def _setup(self, experiment, options, config, strategy, sweep_dir):
        self.experiment = experiment
        self.options = options
        self.base_config = config
        self.strategy = strategy
        self.sweep_dir = sweep_dir
        self.failures: list[tuple[str, str]] = []

    def run_trial(self, trial, *args, **kwargs):
        values = trial.hyperparameters.values
        config = {**self.base_config, **_trial_values(trial)}
        warm_start, initial_epoch = None, 0
        if "tuner/epochs" in values:  # Hyperband
            config["epochs"] = int(values["tuner/epochs"])
            previous = values.get("tuner/trial_id")
            if previous:
                warm_start = str(self.sweep_dir / f"trial_{previous}")
                initial_epoch = int(values["tuner/initial_epoch"])
        options = dataclasses.replace(
            self.options, mode="train", run_parent=str(self.sweep_dir),
            run_name=f"trial_{trial.trial_id}", warm_start=warm_start,
            initial_epoch=initial_epoch, hparams=(), hparams_file=None,
            epochs=None, batch_size=None, dataset=None, weights=None, init_from=None)
        logging.info("Trial %s: %s", trial.trial_id, _trial_values(trial))
        from common import training
        try:
            metrics = training.execute(self.experiment, options, config, self.strategy)
        except Exception as e:  # Keras Tuner logs it and goes on; so do we.
            message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            self.failures.append((trial.trial_id, f"{type(e).__name__}: {message}"))
            logging.error("Trial %s failed: %s", trial.trial_id, message)
            raise kt.errors.FailedTrialError(message) from e
        history = metrics["history"]
        if not history or OBJECTIVE not in history[-1]:
            raise kt.errors.FailedTrialError(f"trial {trial.trial_id} reported no {OBJECTIVE}")
        return {OBJECTIVE: history[-1][OBJECTIVE]}


class _Hyperband(_ProjectTrials, kt.Hyperband):
    pass


class _Random(_ProjectTrials, kt.RandomSearch):
    pass


class _Bayesian(_ProjectTrials, kt.BayesianOptimization):
    pass


def _make_tuner(experiment, options, config, strategy, sweep_dir, space):
    common = dict(
        hypermodel=None, objective=kt.Objective(OBJECTIVE, "max"),
        hyperparameters=space, tune_new_entries=False,
        directory=str(sweep_dir), project_name="tuner", overwrite=False,
        distribution_strategy=strategy, seed=options.seed,
        # Failures are counted here (every trial failed -> an error), not by
        # Keras Tuner stopping the sweep after three in a row.
        max_consecutive_failed_trials=10**6)
    if options.tuner == "hyperband":
        if "epochs" not in config:
            raise UserError("Hyperband needs an 'epochs' hyperparameter; this experiment "
                            "has none, use --tuner=random or --tuner=bayesian")
        max_epochs = options.max_epochs or config["epochs"]
        if max_epochs < 2:
            raise UserError(f"--max_epochs={max_epochs}: Hyperband needs at least 2")
        tuner = _Hyperband(max_epochs=max_epochs, factor=options.hyperband_factor, **common)
    elif options.tuner == "random":
        tuner = _Random(max_trials=options.max_trials, **common)
    elif options.tuner == "bayesian":
        tuner = _Bayesian(max_trials=options.max_trials, **common)
    else:
        raise UserError(f"unknown --tuner={options.tuner!r}; choose one of: {', '.join(TUNERS)}")
    tuner._setup(experiment, options, config, strategy, sweep_dir)
    _try_defaults_first(tuner.oracle, space, config)
    return tuner


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


def _sweep_dir(options) -> tuple[pathlib.Path, bool]:
    parent = pathlib.Path(options.results_dir) / options.experiment
    if options.sweep_name is None:
        return results.new_dir(parent, prefix="sweep-"), False
    if not options.sweep_name or "/" in options.sweep_name:
        raise UserError(f"bad --sweep_name {options.sweep_name!r}: use a plain folder name")
    path = parent / options.sweep_name
    resuming = path.exists()
    path.mkdir(parents=True, exist_ok=True)
    return path, resuming


def _check_same_sweep(sweep_dir: pathlib.Path, description: dict) -> None:
    path = sweep_dir / "sweep.json"
    if path.exists():
        previous = results.read_json(path)
        if previous.get("settings") != description["settings"]:
            raise UserError(f"sweep {sweep_dir} was started with other settings "
                            f"({previous.get('settings')}); use another --sweep_name")
    else:
        results.write_json_atomic(path, description)


def _write_hparams_config(sweep_dir: pathlib.Path, space: kt.HyperParameters) -> None:
    """Declares the searched hyperparameters and the metrics for the HParams
    dashboard at the sweep's root (the trials' folders hold their values)."""
    writer = tf.summary.create_file_writer(str(sweep_dir / "logs"))
    with writer.as_default():
        hp_api.hparams_config(
            hparams=[hp_api.HParam(name) for name in space.values],
            metrics=[hp_api.Metric("epoch_accuracy", group="validation",
                                   display_name="validation accuracy"),
                     hp_api.Metric("epoch_loss", group="validation",
                                   display_name="validation loss"),
                     hp_api.Metric("epoch_accuracy", group="test",
                                   display_name="test accuracy")])
    writer.close()


def sweep(experiment, options, config: dict, strategy: tf.distribute.Strategy) -> dict:
    """Runs (or resumes) a sweep; returns what best_hparams.json holds."""
    space = search_space(experiment, config)
    fixed = {a.partition("=")[0].strip() for a in options.hparams}
    clash = sorted(fixed & set(space.values))
    if clash:
        raise UserError(f"--hparams fixes {', '.join(clash)}, which the sweep searches; "
                        "drop it from --hparams or from the search space")
    if options.tuner != "hyperband" and options.max_epochs and "epochs" in config:
        config = {**config, "epochs": options.max_epochs}
    sweep_dir, resuming = _sweep_dir(options)
    settings = {"tuner": options.tuner, "max_trials": options.max_trials,
                "max_epochs": options.max_epochs, "hyperband_factor": options.hyperband_factor,
                "fixed_hparams": sorted(options.hparams), "seed": options.seed}
    _check_same_sweep(sweep_dir, {"experiment": options.experiment, "settings": settings,
                                  "search_space": space.get_config()})
    logging.info("%s sweep %s (%s, %s); to resume after an interruption: --sweep_name=%s",
                 "Resuming" if resuming else "Starting", sweep_dir, options.tuner,
                 strategy_lib.strategy_name(strategy), sweep_dir.name)
    _write_hparams_config(sweep_dir, space)
    tuner = _make_tuner(experiment, options, config, strategy, sweep_dir, space)
    try:
        tuner.search()
    except RuntimeError as e:
        logging.error("Keras Tuner stopped the sweep: %s", str(e).splitlines()[0])
    completed = [t for t in tuner.oracle.trials.values()
                 if t.status == kt.engine.trial.TrialStatus.COMPLETED]
    if not completed:
        first = tuner.failures[0] if tuner.failures else _first_failure(tuner)
        raise UserError(f"every trial of sweep {sweep_dir.name} failed; first failure "
                        f"(trial {first[0]}): {first[1]}")
    best_trials = [t for t in tuner.oracle.get_best_trials(num_trials=len(completed))
                   if t.status == kt.engine.trial.TrialStatus.COMPLETED and t.score is not None][:5]
    print(format_best(best_trials, config))
    best = best_trials[0]
    best_config = results.read_json(sweep_dir / f"trial_{best.trial_id}" / results.CONFIG_FILE)
    best_hparams = {**_trial_values(best)}
    if "epochs" in best_config["hparams"]:
        best_hparams["epochs"] = best_config["hparams"]["epochs"]
    payload = {
        "experiment": options.experiment,
        "sweep": str(sweep_dir),
        "trial": best.trial_id,
        "objective": {"name": OBJECTIVE, "value": best.score},
        "hparams": best_hparams,
        "trials_completed": len(completed),
        "trials_failed": sum(1 for t in tuner.oracle.trials.values()
                             if t.status == kt.engine.trial.TrialStatus.FAILED),
        "train_it_with": f"python launch.py --experiment={options.experiment} "
                         f"--hparams_file={sweep_dir / 'best_hparams.json'}",
    }
    results.write_json_atomic(sweep_dir / "best_hparams.json", payload)
    logging.info("Best trial %s: %s %.4f; %s", best.trial_id, OBJECTIVE, best.score,
                 payload["train_it_with"])
    return payload


def _first_failure(tuner) -> tuple[str, str]:
    for trial in tuner.oracle.trials.values():
        if trial.message:
            lines = [l for l in trial.message.strip().splitlines() if l.strip()]
            return trial.trial_id, lines[-1] if lines else "failed"
    return "?", "no trial ran"


def format_best(trials, config: dict) -> str:
    names = sorted({k for t in trials for k in _trial_values(t)})
    header = ["trial", OBJECTIVE, "epochs"] + names
    rows = []
    for t in trials:
        values = t.hyperparameters.values
        epochs = values.get("tuner/epochs", config.get("epochs", "-"))
        rows.append([t.trial_id, f"{t.score:.4f}", str(epochs)]
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
