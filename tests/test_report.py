"""The results report, on fixture metrics files."""

import json
import pathlib
import subprocess
import sys

import pytest

from common.runs import report

ROOT = pathlib.Path(__file__).resolve().parent.parent
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _history(epochs, start_loss):
    return [{"epoch": e, "loss": start_loss / (e + 1), "val_loss": start_loss / (e + 1.5),
             "accuracy": 0.5 + 0.1 * e, "val_accuracy": 0.45 + 0.1 * e} for e in range(epochs)]


def _write(results: pathlib.Path, relative: str, metrics, model_bytes: int = 0):
    folder = results / relative
    (folder / "model").mkdir(parents=True)
    (folder / "metrics.json").write_text(json.dumps(metrics))
    if model_bytes:
        (folder / "model" / "model.keras").write_bytes(b"x" * model_bytes)


def make_results(results: pathlib.Path):
    _write(results, "mnist_lenet/run-a", {
        "status": "completed", "dataset": "fashion_mnist",
        "data_source": "/usr/share/datasets/fashion-mnist",
        "strategy": "DefaultStrategy", "num_replicas": 1, "epochs": 3,
        "test_accuracy": 0.9006, "train_images_per_second": 11655.5, "num_parameters": 61706,
        "wall_seconds_total": 15.5, "history": _history(3, 1.0),
        "models": [{"name": "model", "format": "keras", "path": "model/model.keras",
                    "bytes": 1234}],
        "exported": [{"format": "saved_model", "path": "export/saved_model/1", "bytes": 285698},
                     {"format": "tflite", "path": "export/model_float.tflite",
                      "bytes": 250444}]}, model_bytes=1234)
    _write(results, "mnist_lenet/run-b", {
        "status": "completed", "dataset": "mnist", "data_source": "/tmp/pytest-7/idx",
        "strategy": "MirroredStrategy", "num_replicas": 2, "epochs": 2,
        "test_accuracy": 0.8875, "train_images_per_second": 7647.0,
        "history": _history(2, 1.2)}, model_bytes=1234)
    _write(results, "mnist_lenet/sweep-1/trial_1", {
        "status": "completed", "strategy": "DefaultStrategy", "num_replicas": 1, "epochs": 1,
        "test_accuracy": 0.8, "history": _history(1, 1.5)})
    _write(results, "mnist_lenet/diverged", {
        "status": "failed", "failure": "training diverged", "test_accuracy": None,
        "strategy": "DefaultStrategy", "num_replicas": 1, "epochs": 1,
        "history": [{"epoch": 0, "loss": None}]})
    measured = [{"name": s, "test_accuracy": a, "bytes": b, "gzip_bytes": g}
                for s, a, b, g in [("baseline", 0.90, 249266, 230040),
                                   ("pruned", 0.899, 249266, 69838),
                                   ("pqat", 0.897, 257858, 70843),
                                   ("float_tflite", 0.90, 250444, 230699),
                                   ("int8_tflite", 0.8975, 68544, 22020)]]
    _write(results, "pruning_qat/p", {
        "status": "completed", "strategy": "DefaultStrategy", "num_replicas": 1, "epochs": 11,
        "test_accuracy": 0.8975, "history": _history(11, 1.0),
        "stages": [{"name": "baseline", "first_epoch": 0}, {"name": "pruned", "first_epoch": 5},
                   {"name": "pqat", "first_epoch": 9}],
        "models_measured": measured, "headline_model": "int8_tflite",
        "models": [{"name": "int8_tflite", "format": "tflite",
                    "path": "model/pqat_int8.tflite", "bytes": 68544}]})
    (results / "bench").mkdir()
    (results / "bench" / "metrics.json").write_text("{}")  # not a run


def test_report_tables_and_plots(tmp_path):
    make_results(tmp_path)
    text, markdown = report.build_report(tmp_path)
    assert "== mnist_lenet (4 runs)" in text and "== pruning_qat (1 runs)" in text
    lines = {line.split()[0]: line.split() for line in text.splitlines()
             if line.startswith(("run-", "sweep-", "p ", "diverged"))}
    assert lines["run-a"][1:] == ["completed", "fashion_mnist", "DefaultStrategy", "1", "3",
                                  "0.9006", "11,655.5", "1,234"]
    # A run on a fixture folder says so; a failed run says it failed.
    assert lines["run-b"][1:4] == ["completed", "mnist", "(idx)"]
    assert lines["diverged"][1] == "failed" and lines["diverged"][7] == "-"
    assert "sweep-1/trial_1" in lines
    assert lines["p"][-1] == "68,544"  # the headline model: the int8 TFLite file
    assert "bench" not in text
    comparison = text.split("== mnist_lenet")[0]
    assert "run-a" in comparison and "61,706" in comparison and "int8_tflite" in comparison
    # The comparison row carries what the run exported for serving.
    row = next(line.split() for line in comparison.splitlines() if "run-a" in line)
    assert row[-2:] == ["285,698", "250,444"] and row[-3] == "1,234"
    assert "| run-a | completed | fashion_mnist | DefaultStrategy | 1 | 3 | 0.9006 |" in markdown
    for name in ("report_mnist_lenet_curves.png", "report_pruning_qat_curves.png",
                 "report_pruning_qat_accuracy_vs_size.png"):
        assert f"]({name})" in markdown
        assert (tmp_path / name).read_bytes()[:8] == PNG_MAGIC
    assert not (tmp_path / "report_mnist_lenet_accuracy_vs_size.png").exists()


@pytest.mark.parametrize("content", ["[]", "null", '{"test_accuracy": "high"}',
                                     '{"test_accuracy": 0.9, "history": [1, 2]}', "{not json"])
def test_a_malformed_metrics_file_is_skipped_with_one_line(tmp_path, content, capsys):
    make_results(tmp_path)
    bad = tmp_path / "mnist_lenet" / "broken"
    bad.mkdir()
    (bad / "metrics.json").write_text(content)
    text, _ = report.build_report(tmp_path)
    assert "run-a" in text and "broken" not in text
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 1 and str(bad / "metrics.json") in errors[0]


def test_report_command(tmp_path):
    make_results(tmp_path)
    result = subprocess.run([sys.executable, "-m", "common.runs.report",
                             f"--results_dir={tmp_path}"], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "run-a" in result.stdout
    assert (tmp_path / "report.md").read_text().startswith("# Results report")


def test_unwritable_report_is_one_line(tmp_path):
    make_results(tmp_path)
    (tmp_path / "report.md").mkdir()  # unwritable as a file, even for root
    result = subprocess.run([sys.executable, "-m", "common.runs.report",
                             f"--results_dir={tmp_path}"], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("report: error: cannot write")
    assert "report.md" in lines[0]


def test_report_without_runs_and_without_folder(tmp_path):
    text, markdown = report.build_report(tmp_path)
    assert "no finished runs" in text and "no finished runs" in markdown
    result = subprocess.run([sys.executable, "-m", "common.runs.report",
                             f"--results_dir={tmp_path / 'nope'}"], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "does not exist" in result.stderr
    assert "Traceback" not in result.stderr


def _run(name, epochs, start, end, dataset="fashion_mnist",
         source="/usr/share/datasets/fashion-mnist", status="completed"):
    history = []
    for epoch in range(epochs):
        accuracy = start + (end - start) * ((epoch + 1) / epochs) ** 0.5
        history.append({"epoch": epoch, "loss": 2.3 * (1 - accuracy), "accuracy": accuracy,
                        "val_loss": 2.3 * (1 - accuracy) + 0.05,
                        "val_accuracy": accuracy - 0.01})
    return {"_name": name, "status": status, "test_accuracy": end, "history": history,
            "dataset": dataset, "data_source": source}


def test_curves_of_eight_varied_runs_stay_readable():
    """Issue 25's eight runs: five-epoch and one-epoch runs, an image-folder
    run far below the others, a failed one. Runs on other data get their own
    axes, one-epoch runs are left out and counted, the legend sits beside
    the panels, and the axes fit the drawn curves."""
    runs = [_run(f"lr{i}", 5, 0.78 + 0.01 * i, 0.89 + 0.003 * i) for i in range(4)]
    runs += [_run("one", 1, 0.5, 0.84), _run("two", 1, 0.5, 0.83),
             _run("folder", 4, 0.32, 0.61, dataset="image_folder", source="/tmp/fm-folder"),
             _run("diverged", 3, 0.1, 0.1, status="failed")]
    figure = report.curves_figure("mnist_lenet", runs, max_runs=8)
    try:
        axes = figure.axes
        assert len(axes) == 4  # two datasets, two panels each
        titles = [a.get_title() for a in axes]
        assert titles[1].startswith("mnist_lenet on fashion_mnist: accuracy\n4 of 7 runs drawn; "
                                    "not drawn: 1 failed, 2 of one epoch")
        assert titles[3].startswith("mnist_lenet on image_folder (fm-folder): accuracy")
        assert [len(a.get_lines()) for a in axes] == [8, 8, 2, 2]  # train + validation
        figure.canvas.draw()
        renderer = figure.canvas.get_renderer()
        for axis in (axes[1], axes[3]):
            legend = axis.get_legend().get_window_extent(renderer)
            assert not any(legend.overlaps(a.get_window_extent(renderer)) for a in axes)
        assert len(axes[1].get_legend().get_texts()) == 4  # one entry per run
        low, high = axes[1].get_ylim()
        assert 0.80 < low < 0.82 and 0.89 < high < 0.91  # fits 0.82..0.899, not 0.3..0.9
    finally:
        import matplotlib.pyplot as plt
        plt.close(figure)
