"""The names a user chooses from, written once (no TensorFlow import here, so
launch.py can check its flags before TensorFlow loads)."""

STRATEGIES = ("default", "one_device", "mirrored", "multi_worker_mirrored", "tpu")
MODES = ("train", "eval", "tune", "export", "predict")
TUNERS = ("hyperband", "random", "bayesian")
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
OPTIMIZERS = ("adam", "adamw", "sgd", "rmsprop")
LR_SCHEDULES = ("constant", "cosine")
# Datasets read without a download (their original files, or image folders);
# any other TFDS name is looked up in TFDS.
DATASETS = ("mnist", "fashion_mnist", "cifar10", "image_folder")
