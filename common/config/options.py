"""What a command asks for: launch.py's flags as one value (no TensorFlow)."""

import dataclasses
from typing import Optional


@dataclasses.dataclass
class RunOptions:
    """Everything launch.py's flags say; defaults match the flags'."""
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
    # Sweeps (--mode=tune); see common/tuning.py.
    tuner: str = "hyperband"
    max_trials: int = 10
    max_epochs: Optional[int] = None
    hyperband_factor: int = 3
    sweep_name: Optional[str] = None
    # Prediction (--mode=predict); see common/deploy.py.
    inputs: Optional[str] = None
    top_k: int = 1
    output: Optional[str] = None
    # Set by a sweep for its trials: where the run folder goes, and the run a
    # Hyperband trial continues (its weights, from its last epoch).
    run_parent: Optional[str] = None
    warm_start: Optional[str] = None
    initial_epoch: int = 0
    verbose: int = 1  # Keras progress: 1 bar, 2 one line per epoch, 0 none


# Dedicated flags that set a hyperparameter of the same name.
HPARAM_FLAGS = ("epochs", "batch_size", "dataset", "weights", "init_from",
                "steps_per_execution", "jit_compile", "mixed_precision", "deterministic")
