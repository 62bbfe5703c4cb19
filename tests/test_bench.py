"""Smoke tests of the benchmark scripts at tiny sizes: each runs as a user
would run it, prints its ratio and writes its figures as JSON."""

import json
import pathlib
import subprocess
import sys

import pytest

from tests.fixtures import write_idx_dataset

ROOT = pathlib.Path(__file__).resolve().parent.parent
# Each script trains real models: minutes on 2 cores.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def idx_dir(tmp_path_factory):
    return write_idx_dataset(tmp_path_factory.mktemp("idx"), num_train=400, num_test=100)


def bench(script, *args):
    result = subprocess.run([sys.executable, str(ROOT / "bench" / script), *args],
                            cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_runner_overhead(tmp_path, idx_dir):
    out = bench("runner_overhead.py", "--epochs=3", "--rounds=1", "--dataset=mnist",
                f"--data_dir={idx_dir}", f"--results_dir={tmp_path}")
    figures = json.loads((tmp_path / "bench" / "runner_overhead.json").read_text())
    # The first epoch of each run (tracing) is left out: 2 epochs counted, for
    # the runner and both plain feeds, all at the runner's levers.
    assert {k: len(v) for k, v in figures["images_per_second"].items()} == {
        "runner": 2, "arrays": 2, "tf.data": 2}
    assert min(min(v) for v in figures["images_per_second"].values()) > 50
    assert figures["levers"] == {"steps_per_execution": 128, "jit_compile": False,
                                 "mixed_precision": "float32"}
    medians = figures["medians"]
    assert figures["strongest_plain"] == max(("arrays", "tf.data"), key=medians.get)
    assert figures["ratio"] == pytest.approx(medians["runner"]
                                             / medians[figures["strongest_plain"]])
    assert f"runner / strongest plain ({figures['strongest_plain']}) {figures['ratio']:.3f}" in out


def test_pipeline_headroom(tmp_path, idx_dir):
    out = bench("pipeline_headroom.py", "--steps=3", f"--data_dir={idx_dir}",
                "--cifar_records_per_batch=30", f"--results_dir={tmp_path}")
    figures = json.loads((tmp_path / "bench" / "pipeline_headroom.json").read_text())
    for name, batch in (("mnist_lenet", 64), ("cifar_vgg_transfer", 64)):
        row = figures["experiments"][name]
        assert row["batch_size"] == batch
        assert row["pipeline_images_per_second"] > 100 and row["model_images_per_second"] > 1
        assert f"{name}: pipeline {row['pipeline_images_per_second']:,.0f} images/s" in out
    assert figures["experiments"]["mnist_lenet"]["data_source"] == str(idx_dir)


def test_replicas(tmp_path, idx_dir):
    out = bench("replicas.py", "--epochs=2", "--rounds=1", "--num_devices=2",
                f"--data_dir={idx_dir}", f"--results_dir={tmp_path}")
    figures = json.loads((tmp_path / "bench" / "replicas.json").read_text())
    assert figures["replicas"] == 2  # MirroredStrategy really ran 2 replicas
    assert len(figures["default_images_per_second"]) == 1
    assert f"scaling efficiency {figures['scaling_efficiency']:.2f}" in out


def test_compression_runs_a_small_pipeline_when_there_is_no_run(tmp_path):
    out = bench("compression.py", "--invocations=20", "--rounds=2", f"--results_dir={tmp_path}")
    figures = json.loads((tmp_path / "bench" / "compression.json").read_text())
    assert figures["size_ratio"] > 3  # int8 weights against float32
    assert figures["gzip_ratio_vs_float_file"] > figures["size_ratio"]  # pruned zeros
    assert "int8/float latency" in out


def test_levers(tmp_path, idx_dir):
    out = bench("levers.py", "--experiments=mnist_lenet", "--steps=8", "--rounds=1",
                "--spe_values=4", f"--data_dir={idx_dir}", f"--results_dir={tmp_path}")
    figures = json.loads((tmp_path / "bench" / "levers_mnist_lenet.json").read_text())
    lenet = figures["experiments"]["mnist_lenet"]
    configs = lenet["configurations"]
    assert configs["steps_per_execution=4"]["steps_per_execution"] == 4
    assert configs["jit_compile"] == {"steps_per_execution": 1, "jit_compile": True,
                                      "mixed_precision": "float32"}
    assert configs["experiment defaults"]["steps_per_execution"] == 128
    assert all(rate > 1 for rate in lenet["median_images_per_second"].values())
    assert "levers: mnist_lenet: steps_per_execution=4:" in out


def test_streaming(tmp_path, idx_dir):
    out = bench("streaming.py", "--experiments=mnist_mlp", "--rounds=1", "--epochs=2",
                f"--data_dir={idx_dir}", f"--results_dir={tmp_path}")
    figures = json.loads((tmp_path / "bench" / "streaming.json").read_text())
    mlp = figures["experiments"]["mnist_mlp"]
    assert len(mlp["memory_images_per_second"]) == len(mlp["stream_images_per_second"]) == 1
    assert min(mlp["memory_images_per_second"] + mlp["stream_images_per_second"]) > 100
    assert f"ratio {mlp['ratio']:.3f}" in out


def test_data_scaling(tmp_path):
    out = bench("data_scaling.py", "--sizes=200,600", "--image_size=32",
                f"--folder_root={tmp_path / 'folders'}", f"--results_dir={tmp_path}")
    figures = json.loads((tmp_path / "bench" / "data_scaling.json").read_text())
    for size in ("200", "600"):
        row = figures["figures"][size]
        assert row["files"] == int(size) and row["prepare_images_per_second"] > 1
        first, second = row["runs"]["first"], row["runs"]["second"]
        assert first["cache"]["hit"] is False and second["cache"]["hit"] is True
        assert first["num_test_examples"] == first["totals"]["test"]  # every test image
        assert first["peak_rss_bytes"] > 100 * 2**20
    assert "preparation time per image x" in out and "peak memory x" in out
