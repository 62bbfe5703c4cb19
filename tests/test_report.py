"""The results report, on fixture metrics files."""

import json
import pathlib
import subprocess
import sys

from common import report

ROOT = pathlib.Path(__file__).resolve().parent.parent
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _history(epochs, start_loss):
    return [{"epoch": e, "loss": start_loss / (e + 1), "val_loss": start_loss / (e + 1.5),
             "accuracy": 0.5 + 0.1 * e, "val_accuracy": 0.45 + 0.1 * e} for e in range(epochs)]


def _write(results: pathlib.Path, relative: str, metrics: dict, model_bytes: int = 0):
    folder = results / relative
    (folder / "model").mkdir(parents=True)
    (folder / "metrics.json").write_text(json.dumps(metrics))
    if model_bytes:
        (folder / "model" / "model.keras").write_bytes(b"x" * model_bytes)


def make_results(results: pathlib.Path):
    _write(results, "mnist_lenet/run-a", {
        "strategy": "DefaultStrategy", "num_replicas": 1, "epochs": 3,
        "test_accuracy": 0.9006, "train_images_per_second": 11655.5,
        "history": _history(3, 1.0), "model_path": "model/model.keras"}, model_bytes=1234)
    _write(results, "mnist_lenet/run-b", {
        "strategy": "MirroredStrategy", "num_replicas": 2, "epochs": 2,
        "test_accuracy": 0.8875, "train_images_per_second": 7647.0,
        "history": _history(2, 1.2)}, model_bytes=1234)
    _write(results, "mnist_lenet/sweep-1/trial_0001", {
        "strategy": "DefaultStrategy", "num_replicas": 1, "epochs": 1,
        "test_accuracy": 0.8, "history": _history(1, 1.5)})
    stages = [{"stage": s, "test_accuracy": a, "bytes": b, "gzip_bytes": g}
              for s, a, b, g in [("baseline", 0.90, 249266, 230040),
                                 ("pruned", 0.899, 249266, 69838),
                                 ("pqat", 0.897, 257858, 70843),
                                 ("float_tflite", 0.90, 250444, 230699),
                                 ("int8_tflite", 0.8975, 68544, 22020)]]
    _write(results, "pruning_qat/p", {
        "strategy": "DefaultStrategy", "num_replicas": 1, "epochs": 11,
        "test_accuracy": 0.8975, "history": _history(11, 1.0), "stages": stages})
    (results / "bench").mkdir()
    (results / "bench" / "metrics.json").write_text("{}")  # not a run


def test_report_tables_and_plots(tmp_path):
    make_results(tmp_path)
    text, markdown = report.build_report(tmp_path)
    assert "== mnist_lenet (3 runs)" in text and "== pruning_qat (1 runs)" in text
    lines = {line.split()[0]: line.split() for line in text.splitlines()
             if line.startswith(("run-", "sweep-", "p "))}
    assert lines["run-a"][1:] == ["DefaultStrategy", "1", "3", "0.9006", "11,655.5", "1,234"]
    assert lines["run-b"][1:3] == ["MirroredStrategy", "2"]
    assert "sweep-1/trial_0001" in lines
    assert lines["p"][-1] == "68,544"  # the int8 TFLite file is pruning_qat's model
    assert "bench" not in text
    assert "| run-a | DefaultStrategy | 1 | 3 | 0.9006 |" in markdown
    for name in ("report_mnist_lenet_curves.png", "report_pruning_qat_curves.png",
                 "report_pruning_qat_accuracy_vs_size.png"):
        assert f"]({name})" in markdown
        assert (tmp_path / name).read_bytes()[:8] == PNG_MAGIC


def test_report_command(tmp_path):
    make_results(tmp_path)
    result = subprocess.run([sys.executable, "-m", "common.report",
                             f"--results_dir={tmp_path}"], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "run-a" in result.stdout
    assert (tmp_path / "report.md").read_text().startswith("# Results report")


def test_report_without_runs_and_without_folder(tmp_path):
    text, markdown = report.build_report(tmp_path)
    assert "no finished runs" in text and "no finished runs" in markdown
    result = subprocess.run([sys.executable, "-m", "common.report",
                             f"--results_dir={tmp_path / 'nope'}"], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "does not exist" in result.stderr
    assert "Traceback" not in result.stderr
