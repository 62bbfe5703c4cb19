"""What the benchmark scripts share: where data comes from, where figures go."""

import datetime
import os
import pathlib
import platform
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import common  # noqa: E402,F401  (tf_keras before TensorFlow)
from common.data import sources  # noqa: E402
from common.runs import files  # noqa: E402


def mnist_like_data(data_dir: str, dataset: str, fixture_examples: int) -> tuple[str, str]:
    """(dataset, data_dir) to benchmark on: the given folder; else real
    Fashion-MNIST where Debian's package installed it; else a fixture of
    `fixture_examples` synthetic records in the IDX format."""
    if data_dir:
        return dataset, data_dir
    system = sources.SYSTEM_DATASETS_DIR / "fashion-mnist"
    if dataset == "fashion_mnist" and system.is_dir():
        return dataset, str(system)
    from tests.fixtures import write_idx_dataset
    folder = pathlib.Path(tempfile.mkdtemp(prefix="bench-idx-"))
    write_idx_dataset(folder, num_train=fixture_examples, num_test=max(100, fixture_examples // 6))
    return "mnist", str(folder)


def cifar_fixture(records_per_batch: int) -> str:
    from tests.fixtures import write_cifar10_batches
    folder = pathlib.Path(tempfile.mkdtemp(prefix="bench-cifar-"))
    write_cifar10_batches(folder, records_per_batch=records_per_batch)
    return str(folder)


def write(name: str, results_dir: str, payload: dict) -> pathlib.Path:
    """Writes results/bench/<name>.json with the machine and the date."""
    folder = pathlib.Path(results_dir) / "bench"
    folder.mkdir(parents=True, exist_ok=True)
    payload = {"benchmark": name, "date": datetime.datetime.now().isoformat(timespec="seconds"),
               "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
               **payload}
    path = folder / f"{name}.json"
    files.write_json_atomic(path, payload)
    print(f"Wrote {path}")
    return path


def median(values):
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def experiment_data(name: str, data_dir, fixture_examples: int,
                    cifar_records_per_batch: int) -> tuple[str, str]:
    """(dataset, data_dir) for an experiment's benchmark: CIFAR-10 fixture
    files for cifar_vgg_transfer (real CIFAR-10 cannot be downloaded here),
    MNIST-format data for the others."""
    if name == "cifar_vgg_transfer":
        return "cifar10", cifar_fixture(cifar_records_per_batch)
    return mnist_like_data(data_dir, "fashion_mnist", fixture_examples)


def prepared(name: str, data_dir: str, dataset: str):
    """(experiment, config, pipelines) of `name` on the given data, the way
    launch.py prepares them (cifar_vgg_transfer with --weights=none)."""
    import functools
    import experiments
    from common.config import resolve
    from common.config.options import RunOptions
    from common.data import pipeline
    from common.training import run as training_run
    experiment = experiments.get(name)
    options = RunOptions(experiment=name, data_dir=data_dir, dataset=dataset,
                         weights="none" if name == "cifar_vgg_transfer" else None)
    config = resolve.resolve_config(experiment, options)
    splits = training_run.load_data(config, data_dir)
    augment = experiments.hook(experiment, "augment")
    pipes = pipeline.pipelines(splits, config["batch_size"], augment=functools.partial(
        _augment, augment, config) if augment else None)
    return experiment, config, pipes


def _augment(augment, config, image, label):
    return augment(image, label, config)


def first_learning_rate(experiment, config: dict) -> float:
    """The learning rate of the experiment's first stage."""
    from common.training import run as training_run
    return training_run.stages_of(experiment, config)[0].learning_rate
