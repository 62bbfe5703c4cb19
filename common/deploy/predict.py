"""Predictions of a finished run's model on a user's image files.

PNG, JPEG, BMP and GIF files are decoded and converted by data/images.py,
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
    """One row of --mode=predict's output: the file, its top classes as
    (class name, probability) pairs, best first (empty if skipped), and a
    note: the conversions made, or why the file was skipped."""
    file: str
    top: list[tuple[str, float]]
    note: str = ""

    @property
    def skipped(self) -> bool:
        return not self.top


def find_images(inputs: str) -> list[pathlib.Path]:
    """The files --inputs names: a file (whatever its name), a folder (its
    files with an image extension, not recursive) or a glob (every file it
    matches), sorted. Raises UserError if there is none."""
    if not inputs:
        raise UserError("--mode=predict needs --inputs=PATH: an image file, a folder or "
                        "a glob such as 'photos/*.png'")
    path = pathlib.Path(inputs).expanduser()
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
        images = [p for p in files if p.suffix.lower() in image_io.EXTENSIONS]
        if len(images) < len(files):
            logging.info("Ignored %d file(s) in %s without an image extension (%s)",
                         len(files) - len(images), path, ", ".join(image_io.EXTENSIONS))
        if not images:
            raise UserError(f"--inputs={inputs}: the folder holds no image files "
                            f"({', '.join(image_io.EXTENSIONS)})")
        return images
    if glob.has_magic(str(path)):
        matches = sorted(pathlib.Path(p) for p in glob.glob(str(path), recursive=True))
        files = [p for p in matches if p.is_file()]
        if not files:
            raise UserError(f"--inputs={inputs}: the pattern matches no file")
        return files
    raise UserError(f"--inputs={inputs}: no such file or folder")


def load_image(path: pathlib.Path, image_shape: Sequence[int]) -> tuple[np.ndarray, list[str]]:
    """The file at `path` as the model's input, converted the way the
    training data was (common/images.py, as for image folders): uint8
    [H, W, C] (image_shape) and notes saying what was done. Raises
    images.Unusable if it cannot be read or used."""
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
    """A finished run's model as a function from images to probabilities:
    its exported SavedModel where metrics.json declares one, else its Keras
    model (the first keras/h5 model it declares, within its load_scope).

    image_shape: (H, W, C) the model takes; num_classes; source: a
    description of what runs; `probabilities(images uint8 [N, H, W, C])`
    -> float32 [N, num_classes].
    """

    def __init__(self, run_dir: pathlib.Path):
        run_dir = pathlib.Path(run_dir)
        served = [e for e in saved.declared_models(run_dir) if e["format"] == "saved_model"]
        self._serve = self._model = None
        if served:
            path = run_dir / served[0]["path"]
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
            self._model = saved.load_keras_model(run_dir, compile=False)
            self.image_shape = tuple(int(d) for d in self._model.input_shape[1:])
            self.num_classes = int(self._model.output_shape[-1])
            self.source = f"Keras model of {run_dir} (no exported SavedModel)"

    @property
    def serves_saved_model(self) -> bool:
        return self._serve is not None

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        if self._serve is not None:
            return self._serve(tf.constant(images, tf.uint8))["probabilities"].numpy()
        logits = self._model.predict_on_batch(images.astype(np.float32))
        return tf.nn.softmax(tf.cast(logits, tf.float32), axis=-1).numpy()


def predict_files(classifier: Classifier, class_names: Sequence[str],
                  paths: Sequence[pathlib.Path], batch_size: int,
                  top_k: int = 1) -> list[Prediction]:
    """One Prediction per path, in order: files that load are predicted in
    batches of `batch_size`; the others are rows marked skipped."""
    rows: list[Optional[Prediction]] = [None] * len(paths)
    pending: list[tuple[int, np.ndarray, list[str]]] = []

    def flush():
        if not pending:
            return
        batch = np.stack([image for _, image, _ in pending])
        probabilities = classifier.probabilities(batch)
        for (index, _, notes), row in zip(pending, probabilities):
            best = np.argsort(-row, kind="stable")[:top_k]
            rows[index] = Prediction(str(paths[index]),
                                     [(class_names[c], float(row[c])) for c in best],
                                     "; ".join(notes))
        pending.clear()

    for index, path in enumerate(paths):
        try:
            image, notes = load_image(path, classifier.image_shape)
        except image_io.Unusable as e:
            rows[index] = Prediction(str(path), [], f"skipped: {e}")
            continue
        pending.append((index, image, notes))
        if len(pending) == batch_size:
            flush()
    flush()
    return rows  # type: ignore[return-value]


def columns(top_k: int) -> list[str]:
    """file, class, probability, then class_2, probability_2, ... up to
    top_k, then note."""
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
    """The rows as an aligned text table under a header."""
    table = [columns(top_k)] + [_cells(row, top_k) for row in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(table[0]))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip()
             for line in table]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def write_csv(path: pathlib.Path, rows: Sequence[Prediction], top_k: int) -> None:
    """The rows as CSV (columns(top_k)), written atomically. Raises UserError
    if the file cannot be written."""
    path = pathlib.Path(path)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns(top_k))
    writer.writerows(_cells(row, top_k) for row in rows)
    if path.is_dir():
        raise UserError(f"--output={path} is a folder; name a file")
    if not path.parent.is_dir():
        raise UserError(f"--output={path}: the folder {path.parent} does not exist")
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        with os.fdopen(fd, "w", newline="") as f:
            f.write(buffer.getvalue())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except OSError as e:
        raise files.os_error(e, "write the predictions") from None
