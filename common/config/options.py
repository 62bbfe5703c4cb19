"""What a command asks for: launch.py's flags as one value (no TensorFlow),
and the state a sweep gives each of its trials, which travels beside it."""

import dataclasses
from typing import Optional


@dataclasses.dataclass
class RunOptions:
    """Everything launch.py's flags say, and nothing else; the defaults are
    the flags'. config.json records it as "flags"."""
    experiment: str
    strategy: str = "default"
    tpu: str = ""
    device: str = "cpu"
    num_cpu_devices: int = 0
    cluster_timeout: float = 900.0  # seconds a worker waits for its peers
    mode: str = "train"
    epochs: Optional[int] = None
    batch_size: Optional[int] = None
    hparams: tuple[str, ...] = ()
    dataset: Optional[str] = None
    weights: Optional[str] = None
    init_from: Optional[str] = None
    steps_per_execution: Optional[int] = None
    jit_compile: Optional[bool] = None
    mixed_precision: Optional[str] = None
    deterministic: Optional[bool] = None
    data_dir: Optional[str] = None
    results_dir: str = "results"
    run_name: Optional[str] = None
    restart: bool = False
    seed: int = 0
    hparams_file: Optional[str] = None
    # Sweeps (--mode=tune); see common/modes/tune.py.
    tuner: str = "hyperband"
    max_trials: int = 10
    max_epochs: Optional[int] = None
    hyperband_factor: int = 3
    sweep_name: Optional[str] = None
    # Prediction (--mode=predict); see common/modes/predict.py.
    inputs: Optional[str] = None
    top_k: int = 1
    output: Optional[str] = None
    verbose: int = 1  # Keras progress: 1 bar, 2 one line per epoch, 0 none


@dataclasses.dataclass(frozen=True)
class SweepTrial:
    """What a sweep tells one of its trials, beside the sweep's RunOptions.

    Attributes:
        sweep_dir: the sweep's folder; the trial's run folder goes inside it.
        name: the trial's run folder name (trial_<n>).
        warm_start: the run folder of the trial a Hyperband trial continues
            (its final weights are loaded into the new model), or None.
        initial_epoch: the epoch the trial starts counting from (0-based;
            a continued Hyperband trial's predecessor's epochs).
    """
    sweep_dir: str
    name: str
    warm_start: Optional[str] = None
    initial_epoch: int = 0

    def as_dict(self) -> dict:
        """The trial's state as config.json records it ("trial").

        Returns:
            {"sweep_dir", "name", "warm_start", "initial_epoch"}.
        """
        return dataclasses.asdict(self)


# Dedicated flags that set a hyperparameter of the same name.
HPARAM_FLAGS = ("epochs", "batch_size", "dataset", "weights", "init_from",
                "steps_per_execution", "jit_compile", "mixed_precision", "deterministic")
