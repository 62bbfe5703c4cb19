"""Smoke tests of the benchmark scripts at tiny sizes: each runs as a user
would run it, prints its ratio and writes its figures as JSON."""

import json
import pathlib
import subprocess
import sys

import pytest

from tests.fixtures import write_idx_dataset

ROOT = pathlib.Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def idx_dir(tmp_path_factory):
    return write_idx_dataset(tmp_path_factory.mktemp("idx"), num_train=400, num_test=100)


def bench(script, *args):
    result = subprocess.run([sys.executable, str(ROOT / "bench" / script), *args],
                            cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_runner_overhead(tmp_path, idx_dir):
    out = bench("runner_overhead.py", "--epochs=2", "--rounds=1", "--dataset=mnist",
                f"--data_dir={idx_dir}", f"--results_dir={tmp_path}")
    figures = json.loads((tmp_path / "bench" / "runner_overhead.json").read_text())
    assert figures["ratio"] > 0 and len(figures["runner_images_per_second"]) == 1
    assert len(figures["plain_images_per_second"]) == 1
    assert f"ratio {figures['ratio']:.3f}" in out


def test_pipeline_headroom(tmp_path, idx_dir):
    out = bench("pipeline_headroom.py", "--steps=3", f"--data_dir={idx_dir}",
                "--cifar_records_per_batch=30", f"--results_dir={tmp_path}")
    figures = json.loads((tmp_path / "bench" / "pipeline_headroom.json").read_text())
    for name in ("mnist_lenet", "cifar_vgg_transfer"):
        row = figures["experiments"][name]
        assert row["pipeline_images_per_second"] > 0 and row["model_images_per_second"] > 0
        assert row["ratio"] == pytest.approx(row["pipeline_images_per_second"]
                                             / row["model_images_per_second"])
        assert f"{name}: pipeline" in out


def test_replicas(tmp_path, idx_dir):
    out = bench("replicas.py", "--epochs=2", "--rounds=1", "--num_devices=2",
                f"--data_dir={idx_dir}", f"--results_dir={tmp_path}")
    figures = json.loads((tmp_path / "bench" / "replicas.json").read_text())
    assert figures["replicas"] == 2
    assert figures["ratio"] > 0 and "scaling efficiency" in out


def test_compression_runs_a_small_pipeline_when_there_is_no_run(tmp_path):
    out = bench("compression.py", "--invocations=20", "--rounds=2", f"--results_dir={tmp_path}")
    figures = json.loads((tmp_path / "bench" / "compression.json").read_text())
    assert figures["size_ratio"] > 3  # int8 weights against float32
    assert figures["latency_ratio_xnnpack"] > 0 and "int8/float latency" in out


def test_levers(tmp_path, idx_dir):
    out = bench("levers.py", "--experiments=mnist_lenet", "--steps=8", "--rounds=1",
                "--spe_values=4", f"--data_dir={idx_dir}", f"--results_dir={tmp_path}")
    figures = json.loads((tmp_path / "bench" / "levers_mnist_lenet.json").read_text())["experiments"]
    ratios = figures["mnist_lenet"]["ratio_vs_plain"]
    assert ratios["plain"] == 1.0
    assert {"steps_per_execution=4", "jit_compile", "experiment defaults"} <= set(ratios)
    assert all(r > 0 for r in ratios.values()) and "steps_per_execution=4" in out
