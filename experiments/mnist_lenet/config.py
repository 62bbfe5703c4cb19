"""LeNet-5 hyperparameters.

Run (MNIST through TFDS, needs internet once):
    .venv/bin/python launch.py --experiment=mnist_lenet
Offline, on real Fashion-MNIST (Debian's dataset-fashion-mnist package):
    .venv/bin/python launch.py --experiment=mnist_lenet --dataset=fashion_mnist --epochs=5

Expected: Fashion-MNIST, 5 epochs: test accuracy 0.90 (0.9006 measured
2026-12-01; 0.9016 with --strategy=mirrored --num_cpu_devices=2 on
2026-11-23). MNIST cannot be downloaded on the machine these figures come
from; LeNet-5 reaches about 0.99 there.

Your own images, class folders (docs/data.md):
    .venv/bin/python launch.py --experiment=mnist_lenet --dataset=image_folder --data_dir=DIR
6,000 Fashion-MNIST training images as PNG files, 3 epochs: test accuracy
0.816 (mean of 5 seeds, measured 2026-11-29; the same images as IDX: 0.808).
"""

from common.config.hparams import HParam


def get_config() -> dict:
    return {
        "dataset": "mnist",
        "validation_fraction": 0.1,   # carved from the end of train
        "image_size": 28,             # --dataset=image_folder: resized to 28x28,
        "image_channels": 1,          # grey
        "batch_size": 64,             # global, split across replicas
        "epochs": 10,
        "optimizer": "adam",
        "learning_rate": 3e-3,
        "lr_schedule": "cosine",      # decays to 0 over the run; or "constant"
        "dropout": HParam(0.0, ge=0, lt=1, help="after each hidden dense layer"),
        "early_stopping_patience": 0,  # 0: off
        # Speed levers chosen with bench/levers.py and bench/runner_overhead.py
        # (figures in docs/benchmarks.md): many steps per call help LeNet,
        # XLA and mixed_bfloat16 did not.
        "steps_per_execution": 128,
        "jit_compile": False,
        "mixed_precision": "float32",
    }


def search_space(hp) -> None:
    """What a Keras Tuner sweep explores (`--mode=tune`); the defaults above
    stay the defaults outside a sweep."""
    hp.Float("learning_rate", 3e-4, 1e-2, sampling="log")
    hp.Choice("batch_size", [32, 64, 128])
    hp.Float("dropout", 0.0, 0.4, step=0.1)
