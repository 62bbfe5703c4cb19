"""LeNet-5 on MNIST (or Fashion-MNIST with --dataset=fashion_mnist)."""

from experiments.mnist_lenet.config import get_config, search_space
from experiments.mnist_lenet.model import build_model

__all__ = ["get_config", "search_space", "build_model"]
