"""Magnitude pruning, then pruning-preserving QAT, then an int8 TFLite model."""

from experiments.pruning_qat.config import get_config, search_space
from experiments.pruning_qat.flow import finish, stages
from experiments.pruning_qat.model import build_model, quantize_scope as load_scope

__all__ = ["get_config", "search_space", "build_model", "stages", "finish", "load_scope"]
