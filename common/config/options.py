"""What a command asks for: launch.py's flags as one value (no TensorFlow),
and the state a sweep gives each of its trials, which travels beside it."""

import dataclasses
from typing import Optional


@dataclasses.dataclass
class RunOptions:
    """Everything launch.py's flags say, and nothing else; the defaults are
    the flags'. config.json records it as "flags".

    A hyperparameter flag (HPARAM_FLAGS) of None was not given: the
    hyperparameter then comes from the other sources (common/config/resolve.py).

    Attributes:
        experiment: the experiment's name (a folder under experiments/).
        strategy: the tf.distribute strategy, one of choices.STRATEGIES.
        tpu: the TPU's name or grpc:// address; empty or "local" on a TPU VM.
        device: --strategy=one_device's device: cpu, gpu or gpu:N.
        num_cpu_devices: logical CPU devices to split the CPU into (0: no
            split), so MirroredStrategy runs that many replicas without
            accelerators.
        cluster_timeout: seconds a worker of a cluster waits for its peers
            before it stops.
        mode: what to do, one of choices.MODES.
        epochs: epochs to train (multi-stage experiments: every training
            stage), or None.
        batch_size: the global batch, split across replicas, or None.
        hparams: --hparams' "name=value" overrides, in order.
        dataset: a TFDS name or image_folder, or None.
        weights: pretrained weights (imagenet, none or a weights file's
            path), for experiments that take them, or None.
        init_from: a finished run folder whose model the experiment starts
            from, or None.
        steps_per_execution: training steps per call into the graph, or None.
        jit_compile: XLA-compile the train step, or None.
        mixed_precision: the Keras mixed-precision policy, one of
            choices.PRECISIONS, or None.
        deterministic: TensorFlow's op determinism and a deterministic input
            pipeline, or None.
        data_dir: TFDS' data_dir, a folder of the original files, or the
            image folder; None: the defaults (common/data/sources.py).
        data_memory_budget: what the data may hold in memory: "auto" (a
            quarter of the memory available to the process), or a size
            such as "512M" or "2G" ("0": every split streams from disk);
            common/data/memory.py.
        results_dir: where run folders are created.
        run_name: the run folder's name (an unfinished run of that name is
            resumed), or None for a new timestamped folder.
        restart: start the unfinished run `run_name` over.
        seed: the random seed.
        hparams_file: a JSON file of hyperparameters (a sweep's
            best_hparams.json), or None.
        tuner: --mode=tune's Keras Tuner algorithm, one of choices.TUNERS.
        max_trials: trials of a random or bayesian sweep.
        max_epochs: Hyperband's max_epochs; for random and bayesian sweeps,
            each trial's epochs; or None.
        hyperband_factor: Hyperband's reduction factor.
        sweep_name: the sweep folder's name (an unfinished sweep of that name
            is resumed), or None for a new sweep-<timestamp> folder.
        inputs: --mode=predict's image file, folder or glob, or None.
        top_k: --mode=predict: classes listed per image.
        output: --mode=predict's CSV file, or None for predictions.csv in the
            run folder.
        unsafe_deserialization: load models that hold Python code (Lambda
            layers) from run folders, running it; for runs the user trusts.
        verbose: Keras progress: 1 a bar, 2 one line per epoch, 0 none.
    """
    experiment: str
    strategy: str = "default"
    tpu: str = ""
    device: str = "cpu"
    num_cpu_devices: int = 0
    cluster_timeout: float = 900.0
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
    data_memory_budget: str = "auto"
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
    unsafe_deserialization: bool = False
    verbose: int = 1


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
        worker: in a distributed sweep, the KERASTUNER_TUNER_ID of the
            worker that runs the trial; None in a sweep of one process.
    """
    sweep_dir: str
    name: str
    warm_start: Optional[str] = None
    initial_epoch: int = 0
    worker: Optional[str] = None

    def as_dict(self) -> dict:
        """The trial's state as config.json records it ("trial").

        Returns:
            {"sweep_dir", "name", "warm_start", "initial_epoch", "worker"}.
        """
        return dataclasses.asdict(self)


# Dedicated flags that set a hyperparameter of the same name.
HPARAM_FLAGS = ("epochs", "batch_size", "dataset", "weights", "init_from",
                "steps_per_execution", "jit_compile", "mixed_precision", "deterministic")
