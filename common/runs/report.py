"""Every run's outcome in one place, readable without TensorBoard.

    python -m common.runs.report                    # reads results/, writes results/report.md
    python -m common.runs.report --results_dir=DIR

Reads every `metrics.json` under the results folder (runs, and the trials of
sweeps), prints one table per experiment and a comparison of the
experiments, and writes `report.md` with PNG plots beside it: training and
validation curves per experiment (stage boundaries marked), and, for runs
that measured several models (a `models_measured` table), test accuracy
against model size. It follows what each metrics.json declares; a file it
cannot read is skipped with one line naming it.
"""

import math
import os
import pathlib
import sys
from typing import Any, Optional
import urllib.parse

from absl import app, flags

from common.errors import UserError
from common.runs import files

flags.DEFINE_string("results_dir", "results", "Folder of run folders to report on.")
flags.DEFINE_integer("max_runs_per_plot", 8, "Curves of at most this many runs per "
                     "experiment (the best by test accuracy).", lower_bound=1)
FLAGS = flags.FLAGS

COLUMNS = ("run", "status", "dataset", "strategy", "replicas", "epochs", "test accuracy",
           "images/s", "model bytes")
COMPARISON = ("experiment", "run", "dataset", "test accuracy", "parameters", "images/s",
              "training wall s", "model", "model bytes", "SavedModel bytes", "TFLite bytes")
# Where Debian's dataset packages install real data; other local sources may
# be fixtures, and the table says which folder a run read.
REAL_SOURCES = ("tfds", "/usr/share/datasets/")


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) \
        and math.isfinite(value)


# The fields the report shows, by the type they must have where present.
_SCALARS = ("status", "dataset", "data_source", "strategy", "num_replicas", "epochs",
            "train_images_per_second", "num_parameters", "wall_seconds_total",
            "headline_model", "model_path")
# The lists the report reads, and the fields of their rows it reads: None
# means any value (str, number, bool or null) for every field.
_LISTS = {"history": None, "stages": ("name", "first_epoch"),
          "models": ("name", "path", "bytes"), "models_measured": None,
          "exported": ("format", "bytes")}


def _scalar(value) -> bool:
    return value is None or isinstance(value, (str, bool)) or _number(value)


def _problem(metrics: Any) -> Optional[str]:
    """Why a metrics.json cannot be reported, or None: the report reads only
    what it has checked (docs/security.md)."""
    if not isinstance(metrics, dict):
        return f"not a JSON object ({type(metrics).__name__})"
    if metrics.get("status", "completed") != "failed" and not _number(
            metrics.get("test_accuracy")):
        return f"test_accuracy is {metrics.get('test_accuracy')!r}, not a number"
    for name in _SCALARS:
        if not _scalar(metrics.get(name)):
            return f"its {name} is a {type(metrics[name]).__name__}, not a value"
    for name, fields in _LISTS.items():
        value = metrics.get(name, [])
        if not isinstance(value, list) or not all(isinstance(row, dict) for row in value):
            return f"its {name} is not a list of objects"
        if not all(_scalar(row.get(field)) for row in value
                   for field in (fields or row)):
            return f"its {name} holds something other than values"
    if not all(_number(row.get("epoch")) for row in metrics.get("history", [])):
        return "its history is not a list of epoch rows"
    return None


def find_runs(results_dir: pathlib.Path) -> dict[str, list[dict[str, Any]]]:
    """experiment -> runs (metrics.json plus where it was found); unreadable
    or malformed files are skipped with one line on stderr.

    Every metrics.json one or more folders below `results_dir` is read,
    except under its bench/ and crashes/ folders. A file is malformed when it
    is not a JSON object, a run that did not fail has no finite
    test_accuracy, or its history is not a list of rows with a numeric
    epoch. Failed runs are kept.

    Args:
        results_dir: the results folder, a pathlib.Path.

    Returns:
        {experiment (the first folder under `results_dir`): [metrics dict,
        ...]} in path order; each dict also holds "_name" (the run's folder
        below the experiment's, "/"-joined: "run" or "sweep/trial") and
        "_dir" (the run folder, a pathlib.Path).
    """
    runs: dict[str, list[dict[str, Any]]] = {}
    for path in sorted(results_dir.glob("*/**/metrics.json")):
        relative = path.parent.relative_to(results_dir)
        if relative.parts[0] in ("bench", "crashes"):
            continue
        try:
            metrics = files.read_json(path)  # a regular file, bounded, strict
        except (OSError, ValueError) as e:
            print(f"report: skipping {path}: {e}", file=sys.stderr)
            continue
        problem = _problem(metrics)
        if problem:
            print(f"report: skipping {path}: {problem}", file=sys.stderr)
            continue
        metrics["_name"] = "/".join(relative.parts[1:])
        metrics["_dir"] = path.parent
        runs.setdefault(relative.parts[0], []).append(metrics)
    return runs


def headline_model(run: dict) -> Optional[dict]:
    """The declared model whose figures are the run's headline (metrics'
    headline_model; runs before it declared models: model/model.keras).

    Args:
        run: one run as find_runs() returns it (needs "_dir").

    Returns:
        The "models" entry named by metrics.json's "headline_model" (default
        "model"); failing that, {"name", "path" (absolute), "bytes"} of the
        file at "model_path" (default model/model.keras) if it exists; else
        None.
    """
    name = run.get("headline_model", "model")
    for entry in run.get("models") or []:
        if isinstance(entry, dict) and entry.get("name") == name:
            return entry
    try:
        path = files.inside(run["_dir"], run.get("model_path", "model/model.keras"),
                            f"{run['_dir']}'s model_path")
    except UserError:
        return None  # a path out of the run folder is not followed
    return {"name": name, "path": str(path), "bytes": path.stat().st_size} \
        if path.is_file() else None


def model_bytes(run: dict) -> Optional[int]:
    """The size of the run's headline model.

    Args:
        run: one run as find_runs() returns it.

    Returns:
        The headline model's "bytes" (int), or None without a headline model
        or a recorded size.
    """
    entry = headline_model(run)
    return entry.get("bytes") if entry else None


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.1f}" if value >= 100 else f"{value:.4f}"
    if isinstance(value, int):
        return f"{value:,}"
    return " ".join(str(value).split())  # one line: newlines and line separators go


# What Markdown or HTML would read as markup in a table cell or a heading
# (newlines are folded into spaces first).
_MARKDOWN_ESCAPES = {"\\": "\\\\", "|": "\\|", "`": "\\`", "[": "\\[", "]": "\\]",
                     "<": "&lt;", ">": "&gt;"}


def markdown_text(text: str) -> str:
    """`text` as inert Markdown: on one line, with every character that
    Markdown or HTML would read as markup escaped.

    Args:
        text: a cell or heading, from a run's files or its folder's name.

    Returns:
        The escaped text.
    """
    return "".join(_MARKDOWN_ESCAPES.get(c, c) for c in " ".join(str(text).split()))


def _seconds(value) -> Optional[str]:
    return f"{value:,.1f}" if _number(value) else None


def data_label(run: dict) -> str:
    """The dataset, and the folder it came from unless that is TFDS or a
    system dataset package (a fixture or a user's folder is named).

    Args:
        run: one run's metrics.json ("dataset", "data_source").

    Returns:
        "<dataset>" when data_source is missing or starts with one of
        REAL_SOURCES, else "<dataset> (<last part of data_source>)"; "?"
        stands for a missing dataset.
    """
    dataset, source = run.get("dataset", "?"), str(run.get("data_source") or "")
    if not source or source.startswith(REAL_SOURCES):
        return str(dataset)
    return f"{dataset} ({pathlib.Path(source).name})"


def rows_for(runs: list[dict]) -> list[list[str]]:
    """The rows of one experiment's table, one per run, in COLUMNS' order.

    Args:
        runs: the experiment's runs as find_runs() returns them.

    Returns:
        One list of cell strings per run, in the order of `runs`; a missing
        figure is "-", a run without a status reads "completed".
    """
    return [[_cell(v) for v in (run["_name"], run.get("status", "completed"), data_label(run),
                                 run.get("strategy"), run.get("num_replicas"),
                                 run.get("epochs"), run.get("test_accuracy"),
                                 run.get("train_images_per_second"), model_bytes(run))]
            for run in runs]


def comparison_rows(runs: dict[str, list[dict]]) -> list[list[str]]:
    """One row per experiment: its best run by test accuracy among those that
    did not fail (completed, stopped early, or without a status).

    Args:
        runs: experiment -> runs, as find_runs() returns them.

    Returns:
        One list of cell strings per experiment, in COMPARISON's order and
        sorted by experiment; an experiment whose runs all failed has no row.
    """
    rows = []
    for experiment in sorted(runs):
        done = [r for r in runs[experiment] if r.get("status", "completed") != "failed"]
        if not done:
            continue
        best = max(done, key=lambda r: r["test_accuracy"])
        entry = headline_model(best) or {}
        exported = _exported_bytes(best)
        rows.append([_cell(v) for v in (
            experiment, best["_name"], data_label(best), best["test_accuracy"],
            best.get("num_parameters"), best.get("train_images_per_second"),
            _seconds(best.get("wall_seconds_total")), entry.get("name"), entry.get("bytes"),
            exported.get("saved_model"), exported.get("tflite"))])
    return rows


def _exported_bytes(metrics: dict) -> dict[str, int]:
    """{format: bytes} of what the run exported for serving (metrics.json's
    "exported" list: "saved_model", "tflite", ...); empty for runs without."""
    exported = metrics.get("exported")
    if not isinstance(exported, list):
        return {}
    return {e["format"]: e["bytes"] for e in exported
            if isinstance(e, dict) and isinstance(e.get("format"), str) and _number(e.get("bytes"))}


def text_table(columns, rows: list[list[str]]) -> str:
    """A plain-text table: left-aligned columns two spaces apart, the header
    underlined with dashes.

    Args:
        columns: the header's cells, a sequence of str.
        rows: the rows, each a list of str with one cell per column.

    Returns:
        The table's lines joined by newlines (no final newline).
    """
    widths = [max(len(r[i]) for r in [list(columns)] + rows) for i in range(len(columns))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths)),
             "  ".join("-" * w for w in widths)]
    return "\n".join(lines + ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows])


def markdown_table(columns, rows: list[list[str]]) -> str:
    """A Markdown (GitHub) pipe table, every cell escaped (markdown_text).

    Args:
        columns: the header's cells, a sequence of str.
        rows: the rows, each a list of str with one cell per column.

    Returns:
        The table's lines joined by newlines (no final newline).
    """
    lines = ["| " + " | ".join(map(markdown_text, columns)) + " |",
             "|" + "---|" * len(columns)]
    return "\n".join(lines + ["| " + " | ".join(map(markdown_text, r)) + " |" for r in rows])


def _save(figure, path: pathlib.Path) -> None:
    """Saves a figure as PNG beside `path`, then renames it over `path` (a
    link there is replaced, not written through)."""
    temporary = path.with_name(f".{path.name}.tmp")
    try:
        figure.savefig(temporary, dpi=100, format="png")
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def _pyplot():
    """matplotlib's pyplot on the Agg backend: no display needed."""
    import matplotlib
    matplotlib.use("Agg")
    # Labels come from run folders: "$...$" in a name must not be parsed as
    # mathtext (a malformed one stops the whole report).
    matplotlib.rcParams["text.parse_math"] = False
    from matplotlib import pyplot
    return pyplot


MAX_DATA_PANELS = 4     # datasets drawn per experiment (rows of the figure)


def _curve_limits(first: list, later: list, metric: str) -> tuple[float, float]:
    """y limits that fit the curves that matter: every value from the second
    epoch on, and the first epoch's as far as they stretch that range by at
    most its own height again (a first-epoch spike does not squeeze every
    curve into a thin band); accuracy within [0, 1], loss from 0.

    Args:
        first: the drawn curves' first-epoch values.
        later: their values from the second epoch on.
        metric: "loss" or "accuracy".

    Returns:
        (low, high), padded by 5% of the range.
    """
    later = [v for v in later if _number(v)]
    first = [v for v in first if _number(v)]
    if not later:
        later = first or [0.0, 1.0]
    low, high = min(later), max(later)
    height = max(high - low, 0.01)
    if first:
        low, high = max(min(first + [low]), low - height), min(max(first + [high]), high + height)
    pad = 0.05 * max(high - low, 0.01)
    low, high = low - pad, high + pad
    if metric == "accuracy":
        return max(0.0, low), min(1.0, high)
    return max(0.0, low), high


def plot_curves(experiment: str, runs: list[dict], path: pathlib.Path, max_runs: int) -> bool:
    """Writes curves_figure() as a PNG.

    Args:
        experiment: the experiment's name, for the titles.
        runs: the experiment's runs as find_runs() returns them.
        path: the PNG file to write.
        max_runs: at most this many runs are drawn per dataset.

    Returns:
        True if the PNG was written; False (nothing written) when no run
        qualifies.
    """
    figure = curves_figure(experiment, runs, max_runs)
    if figure is None:
        return False
    _save(figure, path)
    _pyplot().close(figure)
    return True


def curves_figure(experiment: str, runs: list[dict], max_runs: int):
    """Loss and accuracy per epoch (epochs numbered from 1), training solid
    and validation dashed, one row of two panels per dataset (runs on
    different data are never drawn in one axes); the stage boundaries of
    each row's best run dotted.

    Per dataset (data_label()), the runs that did not fail and trained at
    least two epochs are candidates; the best `max_runs` by test accuracy
    are drawn (one-epoch runs are single points: they are in the table, not
    the curves). Each row's title says how many of its runs are drawn and
    why the others are not; the legend (one entry per run) sits beside the
    panels, never over the curves; the y axes fit the drawn curves
    (_curve_limits()). At most MAX_DATA_PANELS datasets, those with the most
    runs; the figure's title counts the others.

    Args:
        experiment: the experiment's name, for the titles.
        runs: the experiment's runs as find_runs() returns them.
        max_runs: at most this many runs are drawn per dataset.

    Returns:
        The matplotlib Figure (the caller closes it), or None when no run
        qualifies.
    """
    from matplotlib.ticker import MaxNLocator
    plt = _pyplot()
    groups: dict[str, list[dict]] = {}
    for run in runs:
        groups.setdefault(data_label(run), []).append(run)
    drawable = {}
    for data, members in groups.items():
        ok = [r for r in members if r.get("status") != "failed"]
        long = [r for r in ok if len(r.get("history") or []) >= 2]
        chosen = sorted(long, key=lambda r: r["test_accuracy"], reverse=True)[:max_runs]
        if chosen:
            left = [f"{len(members) - len(ok)} failed"] if len(members) > len(ok) else []
            left += [f"{len(ok) - len(long)} of one epoch"] if len(ok) > len(long) else []
            left += ([f"{len(long) - len(chosen)} with lower test accuracy"]
                     if len(long) > len(chosen) else [])
            note = (f"{len(chosen)} of {len(members)} runs drawn"
                    + (f"; not drawn: {', '.join(left)} (see the table)" if left else ""))
            drawable[data] = (chosen, note)
    if not drawable:
        return None
    shown = sorted(drawable, key=lambda d: (-len(groups[d]), d))[:MAX_DATA_PANELS]
    rows = len(shown)
    figure, axes = plt.subplots(rows, 2, figsize=(14, 4.2 * rows + 0.4), squeeze=False)
    for row, data in enumerate(shown):
        chosen, note = drawable[data]
        handles = []
        plotted = {"loss": ([], []), "accuracy": ([], [])}  # (first epoch, later)
        for run in chosen:
            epochs = [row_["epoch"] + 1 for row_ in run["history"]]
            for axis, metric in zip(axes[row], ("loss", "accuracy")):
                train = [r.get(metric) for r in run["history"]]
                validation = [r.get(f"val_{metric}") for r in run["history"]]
                line, = axis.plot(epochs, train, marker="o", markersize=3,
                                  label=f"{run['_name']} ({run['test_accuracy']:.4f})")
                axis.plot(epochs, validation, linestyle="--", marker="s", markersize=3,
                          color=line.get_color())
                plotted[metric][0].extend(train[:1] + validation[:1])
                plotted[metric][1].extend(train[1:] + validation[1:])
                if metric == "loss":
                    handles.append(line)
        stages = [s for s in chosen[0].get("stages") or [] if isinstance(s, dict)]
        for axis, metric in zip(axes[row], ("loss", "accuracy")):
            for stage in stages[1:]:
                if _number(stage.get("first_epoch")):
                    axis.axvline(stage["first_epoch"] + 0.5, color="grey", linestyle=":")
                    axis.text(stage["first_epoch"] + 0.55, 1.0, stage.get("name", ""),
                              transform=axis.get_xaxis_transform(), fontsize=8, va="top",
                              color="grey")
            axis.set_ylim(*_curve_limits(*plotted[metric], metric))
            axis.set_xlabel("epoch")
            axis.set_ylabel(metric)
            axis.set_title(f"{experiment} on {data}: {metric}\n{note}", fontsize=9)
            axis.xaxis.set_major_locator(MaxNLocator(integer=True))
            axis.grid(alpha=0.3)
        axes[row][1].legend(handles=handles, title="run (test accuracy)", fontsize=8,
                            title_fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0),
                            borderaxespad=0)
    hidden = len(drawable) - len(shown)
    figure.suptitle(f"{experiment}: training solid, validation dashed"
                    + (f"; {hidden} more dataset(s) not drawn (see the table)" if hidden else ""),
                    fontsize=11)
    figure.tight_layout(rect=(0, 0, 1, 0.97))
    return figure


def plot_accuracy_vs_size(experiment: str, runs: list[dict], path: pathlib.Path) -> bool:
    """Test accuracy against gzip size of every model a run measured; the
    accuracy axis spans at least 5 points, so small differences look small.

    Each run that did not fail and has a "models_measured" list contributes
    its rows with numeric gzip_bytes and test_accuracy (a fraction), one
    hollow marker each; sizes are in KiB on a log scale. The accuracy axis
    is clipped to [0, 1], so near either end it can span less than 5
    points.

    Args:
        experiment: the experiment's name, for the title.
        runs: the experiment's runs as find_runs() returns them.
        path: the PNG file to write.

    Returns:
        True if the PNG was written; False (nothing written) when no run
        measured a model with both figures.
    """
    from matplotlib.ticker import FuncFormatter
    plt = _pyplot()
    measured = [r for r in runs if isinstance(r.get("models_measured"), list)
                and r.get("status") != "failed"]
    if not measured:
        return False
    figure, axis = plt.subplots(figsize=(8, 5))
    markers = "osDv^<>p*"
    accuracies = []
    for index, run in enumerate(measured):
        for number, row in enumerate(r for r in run["models_measured"] if isinstance(r, dict)):
            if not (_number(row.get("gzip_bytes")) and _number(row.get("test_accuracy"))):
                continue
            x, y = row["gzip_bytes"] / 1024, row["test_accuracy"]
            accuracies.append(y)
            # Hollow markers of different shapes: models of the same size and
            # accuracy (a float TFLite file and its Keras model) both show.
            axis.scatter(x, y, facecolors="none", edgecolors=f"C{index}", linewidths=1.5,
                         marker=markers[number % len(markers)], s=70,
                         label=f"{run['_name']}: {row.get('name')}")
            axis.annotate(row.get("name", ""), (x, y), xytext=(4, 4 + 8 * (number % 2)),
                          textcoords="offset points", fontsize=7)
    if not accuracies:
        plt.close(figure)
        return False
    middle = (max(accuracies) + min(accuracies)) / 2
    half = max(0.025, (max(accuracies) - min(accuracies)) / 2 + 0.01)
    axis.set_ylim(max(0.0, middle - half), min(1.0, middle + half))
    axis.set_xscale("log")
    plain = FuncFormatter(lambda value, _: f"{value:g}")
    axis.xaxis.set_major_formatter(plain)
    axis.xaxis.set_minor_formatter(plain)
    axis.tick_params(axis="x", which="minor", labelsize=7)
    axis.set_xlabel("model size after gzip (KiB, log scale)")
    axis.set_ylabel("test accuracy")
    axis.set_title(f"{experiment}: test accuracy against size, per model")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=6, ncol=2 if len(measured) > 1 else 1)
    figure.tight_layout()
    _save(figure, path)
    plt.close(figure)
    return True


def build_report(results_dir: pathlib.Path, max_runs: int = 8) -> tuple[str, str]:
    """Returns (text printed, markdown written to results_dir/report.md).

    Writes the plots, report_<experiment>_curves.png and
    report_<experiment>_accuracy_vs_size.png, into `results_dir`; the caller
    prints the text and writes report.md (main()).

    Args:
        results_dir: the results folder, a pathlib.Path.
        max_runs: at most this many runs' curves per experiment.

    Returns:
        (text, markdown), both str: the comparison table and one table per
        experiment, as plain text and as Markdown with the plots linked;
        when no run is found, a one-line message (in the markdown, under
        its heading).

    Raises:
        OSError: a plot cannot be written.
    """
    runs = find_runs(results_dir)
    if not runs:
        message = f"no finished runs (metrics.json) under {results_dir}"
        return message, f"# Results report\n\n{message}.\n"
    text, markdown = [], ["# Results report", "",
                          f"Every finished run under `{results_dir}`.", ""]
    comparison = comparison_rows(runs)
    if comparison:
        text += ["== comparison (each experiment's best completed run)",
                 text_table(COMPARISON, comparison), ""]
        markdown += ["## Comparison", "", "Each experiment's best completed run.", "",
                     markdown_table(COMPARISON, comparison), ""]
    for experiment in sorted(runs):
        rows = rows_for(runs[experiment])
        text += [f"== {_cell(experiment)} ({len(rows)} runs)", text_table(COLUMNS, rows), ""]
        markdown += [f"## {markdown_text(experiment)}", "", markdown_table(COLUMNS, rows), ""]
        curves = results_dir / f"report_{experiment}_curves.png"
        if plot_curves(experiment, runs[experiment], curves, max_runs):
            markdown += [f"![training and validation curves]"
                         f"({urllib.parse.quote(curves.name)})", ""]
        sizes = results_dir / f"report_{experiment}_accuracy_vs_size.png"
        if plot_accuracy_vs_size(experiment, runs[experiment], sizes):
            markdown += [f"![accuracy against model size]({urllib.parse.quote(sizes.name)})",
                         ""]
    return "\n".join(text), "\n".join(markdown)


def main(argv):
    """The command: prints the report and writes <--results_dir>/report.md.

    Args:
        argv: the command line left after absl's flags; only the program's
            name is allowed.

    Returns:
        The exit status (int): 0, or 1 after one line on stderr for
        unexpected arguments, a missing --results_dir or a file that cannot
        be written.
    """
    if len(argv) > 1:
        print(f"report: error: unexpected arguments {argv[1:]}", file=sys.stderr)
        return 1
    results_dir = pathlib.Path(FLAGS.results_dir)
    if not results_dir.is_dir():
        print(f"report: error: --results_dir {results_dir} does not exist", file=sys.stderr)
        return 1
    try:
        text, markdown = build_report(results_dir, FLAGS.max_runs_per_plot)
        files.write_text_atomic(results_dir / "report.md", markdown)
    except OSError as e:
        print(f"report: error: cannot write {e.filename or results_dir}: {e.strerror}",
              file=sys.stderr)
        return 1
    print(text)
    print(f"Wrote {results_dir / 'report.md'}")
    return 0


if __name__ == "__main__":
    app.run(main)
