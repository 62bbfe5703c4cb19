"""Prune -> pruning-preserving QAT -> int8 TFLite, every stage measured.

Stages (one run, one TensorBoard timeline, epochs numbered across stages):
  1. baseline: the base experiment's model (mnist_lenet's LeNet-5), trained
     here, or taken from a finished run with --init_from=results/<exp>/<run>;
  2. pruned: prune_low_magnitude with a PolynomialDecay schedule to
     final_sparsity, UpdatePruningStep, PruningSummaries, then strip_pruning;
  3. pqat: quantize_apply with Default8BitPrunePreserveQuantizeScheme, tuned;
  4. float TFLite of the baseline, int8 TFLite of the PQAT model;
  5. accuracy of each on the whole test split (TFLite models through the
     interpreter), sparsity, raw and gzip sizes, latency side by side.

Run (offline, real Fashion-MNIST from Debian's dataset-fashion-mnist):
    .venv/bin/python launch.py --experiment=pruning_qat --dataset=fashion_mnist
Compress a model you already trained:
    .venv/bin/python launch.py --experiment=pruning_qat \\
        --init_from=results/mnist_lenet/<run> --dataset=fashion_mnist

Expected (Fashion-MNIST, measured on 2 CPU cores, see the README's Results):
int8 TFLite accuracy within 1 point of the float baseline, 80% of the pruned
weights zero in the int8 file, the int8 file about 3.7x smaller than the
float one and about 10x smaller when both are gzipped.
`learning_rate` is unused here: each stage has its own.
"""

from common.config.hparams import HParam


def get_config() -> dict:
    return {
        "dataset": "mnist",
        "validation_fraction": 0.1,
        "image_size": 28,                  # --dataset=image_folder: as mnist_lenet,
        "image_channels": 1,               # 28x28 grey
        "batch_size": 64,                  # global, split across replicas
        "epochs": 0,                       # 0: each stage its own; N: N in each
        "base_experiment": HParam("mnist_lenet", help="whose build_model is compressed"),
        "init_from": HParam("", help="a finished run folder whose model is the "
                            "baseline (no baseline training)"),
        "weights": HParam("imagenet", help="a base experiment's pretrained weights "
                          "(cifar_vgg_transfer: imagenet, none or a file)"),
        "optimizer": "adam",
        "lr_schedule": "cosine",           # per stage, over that stage's steps
        "dropout": HParam(0.0, ge=0, lt=1, help="the base model's, where it has one"),
        "baseline_epochs": HParam(5, ge=0),
        "baseline_learning_rate": HParam(3e-3, gt=0),
        "pruning_epochs": HParam(4, ge=1),
        "pruning_learning_rate": HParam(2e-3, gt=0),
        "initial_sparsity": HParam(0.0, ge=0, lt=1),
        "final_sparsity": HParam(0.8, gt=0, lt=1),
        "pruning_begin_step": HParam(0, ge=0, help="steps counted from the pruning stage"),
        "pruning_end_step": HParam(-1, ge=-1, help="-1: 70% into the pruning stage"),
        "pruning_frequency": HParam(50, ge=1, help="steps between pruning updates "
                                    "(lowered to fit a short stage, with a log line)"),
        "pruning_min_weights": HParam(100, ge=0, help="conv and dense layers with fewer "
                                      "kernel weights are not pruned (fixed transforms "
                                      "such as VGG16's colour-channel swap)"),
        "qat_epochs": HParam(2, ge=0),
        "qat_learning_rate": HParam(1e-4, gt=0),
        "latency_invocations": HParam(500, ge=1, help="per round, per model (fewer for a "
                                      "slow model: about 1 s a round)"),
        "latency_rounds": HParam(7, ge=1),
        "early_stopping_patience": 0,      # 0: off
        # For the baseline stage (pruning and QAT always run one step per
        # call): mnist_lenet's measured choice.
        "steps_per_execution": 128,
    }


def search_space(hp) -> None:
    """What a Keras Tuner sweep explores (`--mode=tune --tuner=random` or
    `bayesian`): how sparse, and how long to recover."""
    hp.Float("final_sparsity", 0.5, 0.9, step=0.1)
    hp.Int("pruning_epochs", 1, 4)
    hp.Int("qat_epochs", 1, 3)
