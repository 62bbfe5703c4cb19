"""--mode=predict: a finished run's model on a user's image files."""

import pathlib
from typing import Any

from absl import logging
import tensorflow as tf

import experiments
from common.config.options import RunOptions
from common.data.splits import check_class_names
from common.deploy import predict, serving
from common.errors import UserError
from common.runs import files, saved


def run(experiment, options: RunOptions, config: dict,
        strategy: tf.distribute.Strategy) -> dict[str, Any]:
    """The model of the finished run --run_name on the image files --inputs
    names, in batches of config["batch_size"]; prints a table (file,
    class, probability, --top_k more, note) and writes it as CSV to
    --output (default: predictions.csv in the run folder).

    Args:
        experiment: the experiment's module (unused).
        options: the command's flags (run_name, inputs, top_k, output).
        config: the resolved hyperparameters (batch_size).
        strategy: unused (prediction runs on the default strategy).

    Returns:
        {"run", "model", "output", "predictions": [{"file", "top":
        [[class, probability], ...], "note"}], "skipped": count}.

    Raises:
        UserError: a missing or unfinished run, no image file at --inputs,
            a model that cannot be loaded, class names whose count is not
            the model's, --top_k above the number of classes, an --output
            that cannot be written or must not be replaced (a run's own
            files, a device, a file that is no predictions CSV: checked
            before any work), or no file that could be read (raised after
            the table is printed; nothing is written then).
    """
    del strategy
    run_dir = saved.find_finished(options.results_dir, options.experiment, options.run_name)
    output = pathlib.Path(options.output).expanduser() if options.output \
        else run_dir / predict.PREDICTIONS_FILE
    predict.check_output(output)  # before any work
    paths = predict.find_images(options.inputs)
    classifier = predict.Classifier(run_dir, scope=experiments.hook(experiment, "load_scope"))
    names = _labels(run_dir, classifier)
    if options.top_k > classifier.num_classes:
        raise UserError(f"--top_k={options.top_k} is more than the model's "
                        f"{classifier.num_classes} classes")
    logging.info("Predicting %d file(s) with the %s", len(paths), classifier.source)
    rows = predict.predict_files(classifier, names, paths, config["batch_size"], options.top_k)
    print(predict.format_table(rows, options.top_k))
    skipped = sum(row.skipped for row in rows)
    if skipped == len(rows):  # nothing to write: an earlier CSV is kept
        raise UserError(f"--inputs={options.inputs}: none of the {len(rows)} file(s) "
                        "could be read as an image (see the skipped rows above); nothing "
                        f"written to {output}")
    predict.write_csv(output, rows, options.top_k)
    print(f"{len(rows) - skipped} predicted, {skipped} skipped; wrote {output}")
    return {"run": str(run_dir), "model": classifier.source, "output": str(output),
            "predictions": [{"file": r.file, "top": [list(t) for t in r.top], "note": r.note}
                            for r in rows],
            "skipped": skipped}


def _labels(run_dir: pathlib.Path, classifier: predict.Classifier) -> list[str]:
    """Class names for the classifier's outputs: export/labels.txt when the
    SavedModel serves, else the run's config.json. Raises UserError if
    their count is not the model's."""
    labels = run_dir / serving.LABELS_PATH
    if classifier.serves_saved_model and labels.is_file():
        try:  # one name per "\n"-ended line, whatever else a name holds
            text = files.read_bytes(labels, files.MAX_JSON_BYTES).decode("utf-8")
        except (OSError, ValueError) as e:
            raise UserError(f"cannot read {labels}: {e}") from None
        names = text.split("\n")[:-1] if text.endswith("\n") else text.split("\n")
        where = str(labels)
    else:
        names = serving.class_names_of(saved.read_config(run_dir), classifier.num_classes)
        where = str(run_dir / files.CONFIG_FILE)
    if len(names) != classifier.num_classes:
        raise UserError(f"{where} has {len(names)} class names but the model has "
                        f"{classifier.num_classes} classes")
    check_class_names(names, where)
    return names
