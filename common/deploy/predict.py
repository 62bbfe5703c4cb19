"""Predictions of a finished run's model on a user's image files.

PNG, JPEG, BMP and GIF files are decoded and converted by common/data/images.py,
the same code that reads image folders for training: resized to the model's
input size, grey to RGB or RGB to grey as needed, alpha flattened. They are
predicted in batches of the run's batch_size, through the run's exported
SavedModel where it has one (else its Keras model); a table of file, class
name and probability (--top_k for more) is printed and written as CSV. A
file that cannot be used is a row marked skipped, never a traceback.
"""

import csv
import dataclasses
import glob
import io
import os
import pathlib
import tempfile
from typing import Optional, Sequence

from absl import logging
import numpy as np
import tensorflow as tf

from common.data import images as image_io
from common.errors import UserError, one_line
from common.runs import files, saved

PREDICTIONS_FILE = "predictions.csv"


@dataclasses.dataclass
class Prediction:
    """One row of --mode=predict's output.

    Attributes:
        file: the image file's path, as a string; bytes of its name that are
            not UTF-8 written \\xNN (images.display()).
        top: the top classes as (class name, probability) pairs, best first;
            probabilities are softmax outputs in 0..1. Empty if skipped.
        note: the conversions made ("; "-separated, e.g. "resized 640x480 to
            28x28"), or "skipped: <why>" for a file that could not be used.
    """
    file: str
    top: list[tuple[str, float]]
    note: str = ""

    @property
    def skipped(self) -> bool:
        """Whether the file was skipped (it has no top classes)."""
        return not self.top


def find_images(inputs: str) -> list[pathlib.Path]:
    """The files --inputs names, sorted.

    A file is taken whatever its name. A folder gives its files (not those of
    its subfolders, nor hidden ones) with an image extension (.png, .jpg,
    .jpeg, .bmp, .gif, any case); the others are logged as ignored. A glob
    gives every regular file it matches (`**` matches subfolders too, but
    does not descend into links to folders, so a link loop cannot make it
    run for ever), each file once (by its real path).

    Args:
        inputs: --inputs: a file, a folder or a glob pattern; `~` is expanded.

    Returns:
        The image files' paths, sorted (one path for a file).

    Raises:
        UserError: `inputs` is empty, names neither a file nor a folder nor a
            pattern that matches a file, names something that is not a
            regular file (a FIFO, a device), or a folder with no image file.
    """
    if not inputs:
        raise UserError("--mode=predict needs --inputs=PATH: an image file, a folder or "
                        "a glob such as 'photos/*.png'")
    path = pathlib.Path(inputs).expanduser()
    if path.is_file():
        return [path]
    if path.is_dir():
        found = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
        images = [p for p in found if p.suffix.lower() in image_io.EXTENSIONS]
        if len(images) < len(found):
            logging.info("Ignored %d file(s) in %s without an image extension (%s)",
                         len(found) - len(images), path, ", ".join(image_io.EXTENSIONS))
        if not images:
            raise UserError(f"--inputs={inputs}: the folder holds no image files "
                            f"({', '.join(image_io.EXTENSIONS)})")
        return images
    if glob.has_magic(str(path)):
        parts = path.parts
        first = next(i for i, part in enumerate(parts) if glob.has_magic(part))
        root = pathlib.Path(*parts[:first]) if first else pathlib.Path(".")
        found, seen = [], set()
        # pathlib's "**" does not follow links to folders (glob.glob's does).
        for match in sorted(root.glob(str(pathlib.PurePath(*parts[first:])))):
            real = match.resolve()
            if match.is_file() and real not in seen:
                seen.add(real)
                found.append(match)
        if not found:
            raise UserError(f"--inputs={inputs}: the pattern matches no file")
        return found
    if os.path.lexists(path):
        raise UserError(f"--inputs={inputs}: not a regular file or a folder")
    raise UserError(f"--inputs={inputs}: no such file or folder")


def load_image(path: pathlib.Path, image_shape: Sequence[int]) -> tuple[np.ndarray, list[str]]:
    """The file at `path` as the model's input, converted the way the
    training data was (common/data/images.py, as for image folders).

    Args:
        path: an image file (PNG, JPEG, BMP or GIF, told by its first bytes).
        image_shape: (H, W, C) the model takes; C must be 1 or 3.

    Returns:
        (image, notes): image uint8 [H, W, C], raw pixels at the model's
        input size; notes, what was done to it, in words ("EXIF rotation",
        "alpha flattened", "RGB to grey" or "grey to RGB", "resized WxH to
        WxH"), empty when nothing was.

    Raises:
        common.data.images.Unusable: the file cannot be read, is empty, is
            no PNG, JPEG, BMP or GIF, is truncated or corrupt, or the model
            takes neither 1 nor 3 channels.
    """
    height, width, channels = (int(d) for d in image_shape)
    try:
        data = pathlib.Path(path).read_bytes()
    except OSError as e:
        raise image_io.Unusable(f"cannot read it ({e.strerror or e})") from None
    image, facts = image_io.decode(data)
    if image.shape[-1] not in (1, 2, 3, 4) or channels not in (1, 3):
        raise image_io.Unusable(f"{image.shape[-1]} channels; the model takes {channels}")
    original = image.shape
    converted, changed = image_io.convert(image, channels, (height, width))
    notes = ["EXIF rotation"] if facts["exif_rotated"] else []
    if changed["alpha_flattened"]:
        notes.append("alpha flattened")
    if changed["channels"]:
        notes.append("RGB to grey" if channels == 1 else "grey to RGB")
    if changed["resized"]:
        notes.append(f"resized {original[1]}x{original[0]} to {width}x{height}")
    return converted, notes


class Classifier:
    """A finished run's model as a function from images to probabilities.

    It is the run's exported SavedModel (its serving_default signature) where
    metrics.json declares one (the first), else its Keras model (the first
    keras/h5 model it declares, not compiled). A SavedModel is a program:
    load one only from a run you trust (docs/security.md).

    Args:
        run_dir: the finished run's folder.
        scope: the context manager factory a Keras model declared with a
            load_scope loads in (the experiment's load_scope hook), or None.

    Attributes:
        image_shape: (H, W, C) the model takes, as ints.
        num_classes: the number of classes it scores.
        source: what runs, in words ("SavedModel <path>" or "Keras model of
            <run_dir> (no exported SavedModel)").

    Raises:
        UserError: the run's metrics.json is damaged or declares a missing
            model, or the SavedModel or Keras model cannot be loaded.
    """

    def __init__(self, run_dir: pathlib.Path, scope=None):
        run_dir = pathlib.Path(run_dir)
        served = [e for e in saved.declared_models(run_dir) if e["format"] == "saved_model"]
        self._serve = self._model = None
        if served:
            path = files.inside(run_dir, served[0]["path"], "its SavedModel")
            try:
                self._serve = tf.saved_model.load(str(path)).signatures["serving_default"]
                specs = list(self._serve.structured_input_signature[1].values())
                outputs = self._serve.structured_outputs["probabilities"]
            except (OSError, KeyError, IndexError, ValueError, tf.errors.OpError) as e:
                raise UserError(f"cannot load the SavedModel {path}: {one_line(e)}") from None
            self.image_shape = tuple(int(d) for d in specs[0].shape[1:])
            self.num_classes = int(outputs.shape[-1])
            self.source = f"SavedModel {path}"
        else:
            self._model = saved.load_keras_model(run_dir, compile=False, scope=scope)
            self.image_shape = tuple(int(d) for d in self._model.input_shape[1:])
            self.num_classes = int(self._model.output_shape[-1])
            self.source = f"Keras model of {run_dir} (no exported SavedModel)"

    @property
    def serves_saved_model(self) -> bool:
        """Whether the exported SavedModel runs (else the Keras model)."""
        return self._serve is not None

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """The model's class probabilities for a batch of images.

        Args:
            images: uint8 [N, H, W, C], raw pixels at the model's input size
                (image_shape).

        Returns:
            float32 [N, num_classes], the softmax of the model's logits.
        """
        if self._serve is not None:
            return self._serve(tf.constant(images, tf.uint8))["probabilities"].numpy()
        logits = self._model.predict_on_batch(images.astype(np.float32))
        return tf.nn.softmax(tf.cast(logits, tf.float32), axis=-1).numpy()


def predict_files(classifier: Classifier, class_names: Sequence[str],
                  paths: Sequence[pathlib.Path], batch_size: int,
                  top_k: int = 1) -> list[Prediction]:
    """Predicts image files in batches; a file that cannot be used is a
    row marked skipped.

    Args:
        classifier: the model that scores the images.
        class_names: the class names, in class-index order (at least
            classifier.num_classes of them).
        paths: the image files, in the order the rows are wanted.
        batch_size: how many loaded images go to the model at once (the last
            batch may be smaller).
        top_k: how many classes each row lists, best first (ties: the lower
            class index first).

    Returns:
        One Prediction per path, in the order of `paths`: its top_k (class
        name, probability) pairs and the conversions made, or for a file
        that common.data.images.Unusable rejects, no classes and "skipped:
        <why>".
    """
    rows: list[Optional[Prediction]] = [None] * len(paths)
    pending: list[tuple[int, np.ndarray, list[str]]] = []

    def flush():
        if not pending:
            return
        batch = np.stack([image for _, image, _ in pending])
        probabilities = classifier.probabilities(batch)
        for (index, _, notes), row in zip(pending, probabilities):
            best = np.argsort(-row, kind="stable")[:top_k]
            rows[index] = Prediction(image_io.display(str(paths[index])),
                                     [(class_names[c], float(row[c])) for c in best],
                                     "; ".join(notes))
        pending.clear()

    for index, path in enumerate(paths):
        try:
            image, notes = load_image(path, classifier.image_shape)
        except image_io.Unusable as e:
            rows[index] = Prediction(image_io.display(str(path)), [],
                                     image_io.display(f"skipped: {e}"))
            continue
        pending.append((index, image, notes))
        if len(pending) == batch_size:
            flush()
    flush()
    return rows  # type: ignore[return-value]


def columns(top_k: int) -> list[str]:
    """The names of the prediction table's columns.

    Args:
        top_k: how many classes each row lists (1 or more).

    Returns:
        "file", "class", "probability", then "class_<k>", "probability_<k>"
        for k = 2..top_k, then "note".
    """
    names = ["file", "class", "probability"]
    for k in range(2, top_k + 1):
        names += [f"class_{k}", f"probability_{k}"]
    return names + ["note"]


def _cells(row: Prediction, top_k: int) -> list[str]:
    cells = [row.file]
    for k in range(top_k):
        if k < len(row.top):
            cells += [row.top[k][0], f"{row.top[k][1]:.4f}"]
        else:
            cells += ["", ""]
    return cells + [row.note]


def format_table(rows: Sequence[Prediction], top_k: int) -> str:
    """The rows as an aligned text table under a header.

    Args:
        rows: the predictions, one line each.
        top_k: how many classes each line lists (columns(top_k)); a row with
            fewer has empty cells.

    Returns:
        The table: the header, a line of dashes, then one line per row;
        columns padded to their widest cell and separated by two spaces,
        probabilities with four decimals, no trailing spaces.
    """
    table = [columns(top_k)] + [_cells(row, top_k) for row in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(table[0]))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip()
             for line in table]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def write_csv(path: pathlib.Path, rows: Sequence[Prediction], top_k: int) -> None:
    """Writes the rows as CSV (header columns(top_k), probabilities with
    four decimals), atomically: to a temporary file in the same folder,
    made readable by all (0644), then renamed over `path`.

    Args:
        path: the CSV file to write (--output, or the run's predictions.csv).
        rows: the predictions, one CSV row each.
        top_k: how many classes each row lists.

    Raises:
        UserError: `path` is a folder, its folder does not exist, it is
            something predict must not replace (see check_output()), or
            writing fails (the operating system's reason); the temporary
            file is removed whatever fails.
    """
    path = pathlib.Path(path)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns(top_k))
    writer.writerows(_cells(row, top_k) for row in rows)
    check_output(path)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        with os.fdopen(fd, "w", newline="") as f:
            f.write(buffer.getvalue())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
        tmp = None
    except OSError as e:
        raise files.os_error(e, "write the predictions") from None
    finally:
        if tmp is not None:
            pathlib.Path(tmp).unlink(missing_ok=True)


# Files of run folders and sweeps that --output must never replace.
PROTECTED_NAMES = (files.CONFIG_FILE, files.METRICS_FILE, files.HISTORY_FILE, files.LOCK_FILE,
                   "data_report.json", "eval.json", "best_hparams.json", "sweep.json",
                   "done.json", "labels.txt")


def check_output(path: pathlib.Path) -> None:
    """Refuses an --output that predict must not write: a folder, a missing
    folder, a symbolic link, a device or FIFO, a file of a run folder
    (PROTECTED_NAMES), or an existing file that is not a predictions CSV
    (one whose first line is not columns()' header). A predictions CSV that
    predict wrote before is replaced.

    Args:
        path: the CSV file --output names.

    Raises:
        UserError: naming the path and why.
    """
    if path.is_dir() and not path.is_symlink():
        raise UserError(f"--output={path} is a folder; name a file")
    if not path.parent.is_dir():
        raise UserError(f"--output={path}: the folder {path.parent} does not exist")
    if path.name in PROTECTED_NAMES:
        raise UserError(f"--output={path}: {path.name} is a run folder's own file; name "
                        f"another file, such as {PREDICTIONS_FILE}")
    if not os.path.lexists(path):
        return
    if path.is_symlink() or not path.is_file():
        raise UserError(f"--output={path} exists and is not a regular file; name a new file")
    try:
        with open(path, newline="") as f:
            first = f.readline(4096)
    except (OSError, UnicodeDecodeError):
        first = ""
    if not first.startswith(",".join(columns(1)[:3])):
        raise UserError(f"--output={path} exists and is not a predictions CSV, so it is not "
                        "replaced; name a new file or remove it")
