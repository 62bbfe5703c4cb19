"""Test set-up: tf_keras, and the CPU split into 2 logical devices.

The split must happen before TensorFlow initialises, so it is done here, at
collection time, before any test module builds a tensor. MirroredStrategy in
these tests then runs 2 real replicas.
"""

import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import common  # noqa: E402,F401  (sets TF_USE_LEGACY_KERAS before TensorFlow)
from common import strategy as strategy_lib  # noqa: E402

NUM_TEST_CPU_DEVICES = 2
strategy_lib.configure_cpu_devices(NUM_TEST_CPU_DEVICES)
