"""Magnitude pruning, then pruning-preserving QAT, then an int8 TFLite model."""

from experiments.pruning_qat.config import get_config, search_space
from experiments.pruning_qat.model import build_model
from experiments.pruning_qat.stages import finish, stages

__all__ = ["get_config", "search_space", "build_model", "stages", "finish"]
