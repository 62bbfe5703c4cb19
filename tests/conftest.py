"""Test set-up: tf_keras, the CPU split into 2 logical devices, and --slow.

The split must happen before TensorFlow initialises, so it is done here, at
collection time, before any test module builds a tensor. MirroredStrategy in
these tests then runs 2 real replicas.

`python -m pytest tests` runs the fast suite; `--slow` adds the end-to-end
tests marked `slow` (subprocesses, kills and resumes, clusters), which is
what .ci/run runs.
"""

import atexit
import os
import pathlib
import shutil
import sys
import tempfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import common  # noqa: E402,F401  (sets TF_USE_LEGACY_KERAS before TensorFlow)
from common.distribute import strategy as strategy_lib  # noqa: E402

# Prepared copies of the tests' data go to a folder of this session, not
# ~/.cache (subprocesses inherit it); tests that need their own set it.
os.environ["DATA_CACHE_DIR"] = tempfile.mkdtemp(prefix="pytest-data-cache-")
atexit.register(shutil.rmtree, os.environ["DATA_CACHE_DIR"], True)

NUM_TEST_CPU_DEVICES = 2
strategy_lib.configure_cpu_devices(NUM_TEST_CPU_DEVICES)


def pytest_addoption(parser):
    parser.addoption("--slow", action="store_true", default=False,
                     help="also run the slow end-to-end tests (what .ci/run does)")


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: an end-to-end test run only with --slow")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--slow"):
        return
    skip = pytest.mark.skip(reason="slow end-to-end test: run with --slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
