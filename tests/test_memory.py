"""Memory that does not grow with the dataset (issue 22): the budget, what
it caches, and training inside a memory cgroup on a folder several times
larger than the limit, with peak memory flat between sizes."""

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import pytest

from common.data import memory, pipeline, sources
from common.errors import UserError
from tests.fixtures import (memory_cgroup, memory_cgroup_reason, run_measured, tinted_folder,
                            write_idx_dataset)

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_cgroup_limits_are_read_for_v1_and_v2_with_their_ancestors(tmp_path):
    proc = tmp_path / "cgroup"
    root = tmp_path / "sys"
    (root / "memory" / "outer" / "inner").mkdir(parents=True)
    (root / "memory" / "outer" / "memory.limit_in_bytes").write_text("2147483648\n")
    (root / "memory" / "outer" / "inner" / "memory.limit_in_bytes").write_text(
        "9223372036854771712\n")  # v1's "no limit"
    (root / "unified" / "job").mkdir(parents=True)
    (root / "unified" / "job" / "memory.max").write_text("1073741824\n")
    (root / "unified" / "memory.max").write_text("max\n")
    proc.write_text("4:memory:/outer/inner\n0::/job\n3:cpu:/\n")
    assert sorted(memory._cgroup_limits(proc, root)) == [2**30, 2**31]
    proc.write_text("4:memory:/\n")
    assert memory._cgroup_limits(proc, root) == []


@pytest.mark.parametrize("text, expected", [("0", 0), ("512M", 512 * 2**20), ("2G", 2**31),
                                            ("1.5g", int(1.5 * 2**30)), ("4096", 4096),
                                            ("3GiB", 3 * 2**30), ("10kB", 10 * 1024)])
def test_sizes_parse(text, expected):
    assert memory.parse_size(text) == expected


def test_a_bad_budget_is_one_line_before_any_work(tmp_path):
    with pytest.raises(UserError, match="--data_memory_budget='lots' is not a size; use auto"):
        memory.budget("lots")
    # A size past tf.data's int64 ram_budget was "unexpected ValueError: Value out of range".
    with pytest.raises(UserError, match="--data_memory_budget='99999999999T' is above the "
                                        "largest budget, 1024T; use auto"):
        memory.budget("99999999999T")
    assert memory.parse_size("1024T") == 2**50
    with pytest.raises(UserError, match="is above the largest budget"):
        memory.parse_size("9" * 400)  # a float of inf: was "unexpected OverflowError"
    result = subprocess.run([sys.executable, str(ROOT / "launch.py"), "--experiment=mnist_mlp",
                             "--data_memory_budget=-1", f"--results_dir={tmp_path}"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "launch.py: error: --data_memory_budget='-1' is not a size; use auto, 0 (stream every "
        "split), or a size such as 512M or 2G")
    assert not list(tmp_path.iterdir())


def test_the_budget_caches_what_fits_and_streams_the_rest(tmp_path, caplog):
    import logging
    caplog.set_level(logging.INFO, logger="absl")
    splits = sources.load("mnist", data_dir=str(write_idx_dataset(tmp_path, 1000, 200)))
    example = splits.train.example_bytes  # 784 pixels + an 8-byte label
    # Room for validation (100) and test (200), not for train (900).
    budget = memory.Budget(400 * example, "a test's")
    pipes = pipeline.pipelines(splits, 32, budget=budget)
    assert pipes.in_memory == {"train": False, "validation": True, "test": True}
    line = next(r.message for r in caplog.records if r.message.startswith("Data "))
    assert "train 900 examples (713 kB) streamed from 8 file(s)" in line
    assert "validation 100 examples (79.2 kB) in memory" in line
    assert "memory budget 317 kB: a test's" in line
    # Both paths give the same examples.
    everything = pipeline.pipelines(splits, 32, budget=memory.Budget(10**9, "big"))
    assert all(everything.in_memory.values())
    for stream in (pipes.validation, everything.validation):
        assert sum(float(w.numpy().sum()) for _, _, w in stream) == 100


def test_the_available_memory_is_the_smaller_of_the_machine_and_the_cgroup(monkeypatch):
    monkeypatch.setattr(memory, "_meminfo_available", lambda: 8 * 2**30)
    monkeypatch.setattr(memory, "_cgroup_limits", lambda: [2 * 2**30, 4 * 2**30])
    assert memory.available() == memory.Available(2 * 2**30, "cgroup limit")
    assert memory.budget().total == 2**29
    assert memory.budget().how == "25% of the 2.15 GB cgroup limit"
    monkeypatch.setattr(memory, "_cgroup_limits", lambda: [])
    assert memory.available() == memory.Available(8 * 2**30, "available memory")


# --- a training in a memory cgroup -------------------------------------------

TINY = '''
"""A model of a few thousand parameters for large images: an average pool
to 14x14, then a dense layer (the data, not the model, is what is large)."""
import tf_keras
from common.config.hparams import SHARED


def get_config():
    return {**SHARED, "dataset": "image_folder", "batch_size": 16, "epochs": 1,
            "learning_rate": 0.01, "image_size": 448, "image_channels": 3}


def build_model(config, image_shape, num_classes):
    pool = max(1, image_shape[0] // 14)
    return tf_keras.Sequential([
        tf_keras.layers.Input(image_shape),
        tf_keras.layers.Rescaling(1 / 255),
        tf_keras.layers.AveragePooling2D(pool),
        tf_keras.layers.Flatten(),
        tf_keras.layers.Dense(num_classes),
    ])
'''

LIMIT = 1280 * 2**20       # the cgroup's limit: TensorFlow alone takes about 800 MB


@pytest.mark.slow
@pytest.mark.skipif(bool(memory_cgroup_reason()), reason=memory_cgroup_reason() or "-")
def test_a_folder_several_times_the_memory_limit_trains_in_flat_memory(tmp_path):
    experiments = tmp_path / "experiments"
    (experiments / "tiny_pool").mkdir(parents=True)
    (experiments / "tiny_pool" / "__init__.py").write_text(textwrap.dedent(TINY))
    image_bytes = 448 * 448 * 3
    large_count = int(3.1 * LIMIT / image_bytes) + 1     # decoded: 3.1 times the limit
    small_count = large_count // 3
    env = {**os.environ, "EXPERIMENTS_PATH": str(experiments),
           "DATA_CACHE_DIR": str(tmp_path / "cache")}
    peaks = {}
    for name, count in (("small", small_count), ("large", large_count)):
        # 64x64 JPEGs, converted to 448x448x3 when prepared.
        folder = tinted_folder(tmp_path / name, count, size=64)
        with memory_cgroup(LIMIT) as group:
            outcome = run_measured(
                [sys.executable, str(ROOT / "launch.py"), "--experiment=tiny_pool",
                 f"--data_dir={folder}", f"--results_dir={tmp_path / 'results'}",
                 f"--run_name={name}", "--verbose=2"], group, env=env, cwd=ROOT)
        assert outcome["returncode"] == 0 and outcome["oom_kills"] == 0, (
            outcome["oom_kills"], outcome["stderr"][-3000:])
        run_dir = tmp_path / "results" / "tiny_pool" / name
        metrics = json.loads((run_dir / "metrics.json").read_text())
        report = json.loads((run_dir / "data_report.json").read_text())
        assert metrics["status"] == "completed"
        assert metrics["num_test_examples"] == report["totals"]["test"]  # every test image
        assert "streamed from" in outcome["stderr"]
        peaks[name] = outcome["peak_rss_bytes"]
    assert large_count * image_bytes > 3 * LIMIT
    # Three times the images, the same memory (within 15%).
    assert peaks["large"] < 1.15 * peaks["small"], peaks
