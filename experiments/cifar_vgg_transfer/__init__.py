"""VGG16 with ImageNet features, transferred to CIFAR-10 in two phases."""

from experiments.cifar_vgg_transfer.config import get_config, search_space
from experiments.cifar_vgg_transfer.model import augment, build_model, stages

__all__ = ["get_config", "search_space", "build_model", "stages", "augment"]
