"""Shared pieces of every experiment: data, strategies, the runner, results.

Importing this package first is what makes the whole project use tf_keras
(Keras 2): TensorFlow Model Optimization only works with it, and its
BackupAndRestore is distribution-aware. The variable must be set before
TensorFlow is first imported, so every entry point (launch.py, the tests)
imports `common` before anything else.
"""

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
# TensorFlow's C++ start-up chatter (oneDNN notices, CUDA probes) is noise for
# users; a caller who wants it can still set the variable explicitly.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
