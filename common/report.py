"""Every run's outcome in one place, readable without TensorBoard.

    python -m common.report                      # reads results/, writes results/report.md
    python -m common.report --results_dir=DIR

Reads every `metrics.json` under the results folder (runs, and the trials of
sweeps), prints one table per experiment, and writes `report.md` with PNG
plots beside it: training and validation curves per run, and for pruning_qat
test accuracy against model size per stage.
"""

import json
import pathlib
import sys
from typing import Any, Optional

from absl import app, flags

flags.DEFINE_string("results_dir", "results", "Folder of run folders to report on.")
flags.DEFINE_integer("max_runs_per_plot", 8, "Curves of at most this many runs per "
                     "experiment (the best by test accuracy).", lower_bound=1)
FLAGS = flags.FLAGS

COLUMNS = ("run", "strategy", "replicas", "epochs", "test accuracy", "images/s", "model bytes")


def find_runs(results_dir: pathlib.Path) -> dict[str, list[dict[str, Any]]]:
    """experiment -> finished runs (metrics.json plus where it was found)."""
    runs: dict[str, list[dict[str, Any]]] = {}
    for path in sorted(results_dir.glob("*/**/metrics.json")):
        relative = path.parent.relative_to(results_dir)
        if relative.parts[0] == "bench":
            continue
        try:
            metrics = json.loads(path.read_text())
        except (OSError, ValueError):
            print(f"report: skipping unreadable {path}", file=sys.stderr)
            continue
        metrics["_name"] = "/".join(relative.parts[1:])
        metrics["_dir"] = path.parent
        runs.setdefault(relative.parts[0], []).append(metrics)
    return runs


def model_bytes(run: dict) -> Optional[int]:
    """The deployable model's size: the int8 TFLite file for pruning_qat,
    else the saved Keras model."""
    for row in run.get("stages", []):
        if row.get("stage") == "int8_tflite":
            return row.get("bytes")
    path = run["_dir"] / run.get("model_path", "model/model.keras")
    return path.stat().st_size if path.is_file() else None


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.1f}" if value >= 100 else f"{value:.4f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def rows_for(runs: list[dict]) -> list[list[str]]:
    return [[_cell(v) for v in (run["_name"], run.get("strategy"), run.get("num_replicas"),
                                 run.get("epochs"), run.get("test_accuracy"),
                                 run.get("train_images_per_second"), model_bytes(run))]
            for run in runs]


def text_table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [list(COLUMNS)] + rows) for i in range(len(COLUMNS))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(COLUMNS, widths)),
             "  ".join("-" * w for w in widths)]
    return "\n".join(lines + ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows])


def markdown_table(rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def _pyplot():
    """matplotlib's pyplot on the Agg backend: no display needed."""
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib import pyplot
    return pyplot


def plot_curves(runs: list[dict], path: pathlib.Path, max_runs: int) -> bool:
    """Loss and accuracy per epoch, training solid and validation dashed."""
    plt = _pyplot()
    chosen = sorted((r for r in runs if r.get("history")),
                    key=lambda r: r.get("test_accuracy") or 0, reverse=True)[:max_runs]
    if not chosen:
        return False
    figure, axes = plt.subplots(1, 2, figsize=(11, 4))
    for run in chosen:
        epochs = [row["epoch"] + 1 for row in run["history"]]
        for axis, metric in zip(axes, ("loss", "accuracy")):
            line, = axis.plot(epochs, [row.get(metric) for row in run["history"]],
                              label=f"{run['_name']} train")
            axis.plot(epochs, [row.get(f"val_{metric}") for row in run["history"]],
                      linestyle="--", color=line.get_color(),
                      label=f"{run['_name']} validation")
    for axis, metric in zip(axes, ("loss", "accuracy")):
        axis.set_xlabel("epoch")
        axis.set_ylabel(metric)
        axis.grid(alpha=0.3)
    axes[1].legend(fontsize=7, loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return True


def plot_compression(runs: list[dict], path: pathlib.Path) -> bool:
    """pruning_qat: test accuracy against gzip size (what pruning buys) for
    every stage of every run."""
    plt = _pyplot()
    staged = [r for r in runs if r.get("stages")]
    if not staged:
        return False
    figure, axis = plt.subplots(figsize=(7, 4.5))
    markers = dict(zip(("baseline", "pruned", "pqat", "float_tflite", "int8_tflite"), "osDv^"))
    for index, run in enumerate(staged):
        color = f"C{index}"
        for row in run["stages"]:
            axis.scatter(row["gzip_bytes"] / 1024, row["test_accuracy"], color=color,
                         marker=markers.get(row["stage"], "o"), s=40,
                         label=f"{run['_name']}: {row['stage']}")
    axis.set_xscale("log")
    axis.set_xlabel("model size after gzip (KiB, log scale)")
    axis.set_ylabel("test accuracy")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=6, ncol=2 if len(staged) > 1 else 1)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return True


def build_report(results_dir: pathlib.Path, max_runs: int = 8) -> tuple[str, str]:
    """Returns (text printed, markdown written to results_dir/report.md)."""
    runs = find_runs(results_dir)
    if not runs:
        message = f"no finished runs (metrics.json) under {results_dir}"
        return message, f"# Results report\n\n{message}.\n"
    text, markdown = [], ["# Results report", "",
                          f"Every finished run under `{results_dir}`.", ""]
    for experiment in sorted(runs):
        rows = rows_for(runs[experiment])
        text += [f"== {experiment} ({len(rows)} runs)", text_table(rows), ""]
        markdown += [f"## {experiment}", "", markdown_table(rows), ""]
        curves = results_dir / f"report_{experiment}_curves.png"
        if plot_curves(runs[experiment], curves, max_runs):
            markdown += [f"![training and validation curves]({curves.name})", ""]
        if experiment == "pruning_qat":
            sizes = results_dir / "report_pruning_qat_accuracy_vs_size.png"
            if plot_compression(runs[experiment], sizes):
                markdown += [f"![accuracy against model size per stage]({sizes.name})", ""]
    return "\n".join(text), "\n".join(markdown)


def main(argv):
    if len(argv) > 1:
        print(f"report: error: unexpected arguments {argv[1:]}", file=sys.stderr)
        return 1
    results_dir = pathlib.Path(FLAGS.results_dir)
    if not results_dir.is_dir():
        print(f"report: error: --results_dir {results_dir} does not exist", file=sys.stderr)
        return 1
    text, markdown = build_report(results_dir, FLAGS.max_runs_per_plot)
    (results_dir / "report.md").write_text(markdown)
    print(text)
    print(f"Wrote {results_dir / 'report.md'}")
    return 0


if __name__ == "__main__":
    app.run(main)
