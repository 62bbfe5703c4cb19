"""VGG16 (ImageNet weights) transferred to CIFAR-10, in two phases.

Phase 1 trains a new head on the frozen VGG16 base; phase 2 unfreezes the
base from `unfreeze_from` (default: block 5) and fine-tunes at a low rate.

Run (downloads CIFAR-10 through TFDS and the ImageNet weights through Keras):
    .venv/bin/python launch.py --experiment=cifar_vgg_transfer --strategy=mirrored
Air-gapped (CIFAR-10's binary version and the weights file copied over):
    .venv/bin/python launch.py --experiment=cifar_vgg_transfer --strategy=mirrored \\
        --data_dir=/data/cifar10 \\
        --weights=/data/vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5
(/data/cifar10 holds cifar-10-binary.tar.gz or its cifar-10-batches-bin/.)

Expected: NOT MEASURED HERE. Neither CIFAR-10 nor the ImageNet weights can
be downloaded on the machine this project is developed on (no internet, no
GPU), so no accuracy of this configuration has been measured by this code.
The figure to expect comes from elsewhere: the Keras VGG16 transfer at 32x32
in github.com/royhuang9/transfer_learning reports validation accuracy of
about 0.64 with the base frozen (our phase 1) and about 0.80 after
fine-tuning (our phase 2). Upsampled inputs (input_size=64 or 96) should do
better, since VGG's features were learned at 224x224; also unmeasured here.
`learning_rate` is unused here: each phase has its own.
"""

from common.config.hparams import HParam

# VGG16's convolution layers, bottom to top: where phase 2 may start.
VGG16_CONV_LAYERS = tuple(
    f"block{block}_conv{i}" for block, convs in ((1, 2), (2, 2), (3, 3), (4, 3), (5, 3))
    for i in range(1, convs + 1))


def get_config() -> dict:
    return {
        "dataset": "cifar10",
        "validation_fraction": 0.1,       # carved from the end of train
        "image_size": 32,                 # --dataset=image_folder: resized to 32x32
        "image_channels": 3,              # RGB (raise image_size with input_size)
        "batch_size": 64,                 # global, split across replicas
        "epochs": 0,                      # 0: each phase its own; N: N in both
        "input_size": HParam(32, ge=32, le=512,
                             help="images are resized to this for VGG16 (64, 96: better)"),
        "weights": HParam("imagenet", help="imagenet, none, or the path of "
                          "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"),
        "augment": True,                  # pad-and-crop + flip, training only
        "augment_pad": HParam(4, ge=0, le=16),
        "head_units": HParam(256, ge=1),
        "head_dropout": HParam(0.5, ge=0, lt=1),
        "optimizer": "adam",
        "lr_schedule": "constant",
        "phase1_epochs": HParam(5, ge=0, help="base frozen, head trained"),
        "phase1_learning_rate": HParam(1e-3, gt=0),
        "phase2_epochs": HParam(5, ge=0, help="base unfrozen from unfreeze_from"),
        "phase2_learning_rate": HParam(1e-5, gt=0),
        "unfreeze_from": HParam("block5_conv1", choices=VGG16_CONV_LAYERS,
                                help="first VGG16 layer trained in phase 2"),
        "early_stopping_patience": 0,     # 0: off
        # Speed levers chosen with bench/levers.py (figures in
        # docs/benchmarks.md): several steps per call gave nothing for a
        # model this size and XLA was slower; float32 stays the default even
        # where mixed_bfloat16 is faster (a CPU with AVX512-BF16), as it is
        # refused on CPUs without bfloat16 and its effect on this transfer's
        # accuracy is unmeasured. On GPUs try --mixed_precision=mixed_float16.
        "steps_per_execution": 1,
        "jit_compile": False,
        "mixed_precision": "float32",
    }


def search_space(hp) -> None:
    """What a Keras Tuner sweep explores (`--mode=tune --tuner=random` or
    `bayesian`; the phase epochs are hyperparameters, so not Hyperband)."""
    hp.Choice("head_units", [128, 256, 512])
    hp.Float("phase1_learning_rate", 1e-4, 1e-2, sampling="log")
    hp.Float("phase2_learning_rate", 1e-6, 1e-4, sampling="log")
    hp.Choice("unfreeze_from", ["block4_conv1", "block5_conv1", "block5_conv3"])
