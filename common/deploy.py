"""Deployment: a run's serving files (export/), and predictions on image files.

What `export()` writes into a run folder (at the end of every training run,
or later with `--mode=export --run_name=RUN`):

    export/saved_model/1/      SavedModel in TensorFlow Serving's layout (model
                               base path export/saved_model, version 1). Its
                               `serving_default` signature takes
                                 images         uint8 [N, H, W, C], raw pixels
                                                at the training size
                               and returns
                                 probabilities  float32 [N, num_classes]
                                 classes        int64 [N] (the argmax)
                               Preprocessing (scaling, resizing, VGG16's
                               channel means) is inside, as in the Keras model.
    export/model_float.tflite  the same model as float TFLite: float32 pixel
                               values 0..255 [1, H, W, C] in, float32 logits
                               [1, num_classes] out (like pruning_qat's
                               baseline_float.tflite; pruning_qat keeps its
                               int8 files in model/); converted in float32
                               whatever the run's mixed_precision
    export/labels.txt          the class names, one a line, in class-index order

metrics.json declares the SavedModel and the TFLite file in "models" (so
--mode=eval scores them too) and lists every exported file under
"exported" (format, path, bytes). The files are built in a hidden staging
folder and renamed into place before metrics.json is rewritten (atomically),
so metrics.json never declares a file that is not there.

`predict_run()` is --mode=predict: a run's model on a user's PNG, JPEG, BMP or
GIF files, converted the way the training data looked (see `load_image`).
"""

import csv
import dataclasses
import glob
import io
import os
import pathlib
import re
import shutil
import tempfile
from typing import Any, Optional, Sequence

from absl import logging
import numpy as np
import tensorflow as tf
import tf_keras

from common import local_files, results, saved_runs, speed
from common.errors import UserError
from common.options import RunOptions

EXPORT_DIR = "export"
SAVED_MODEL_PATH = "export/saved_model/1"       # TF Serving: <base path>/<version>/
TFLITE_PATH = "export/model_float.tflite"
LABELS_PATH = "export/labels.txt"
# Names of the exported models in metrics.json's "models".
SAVED_MODEL_NAME = "export_saved_model"
TFLITE_NAME = "export_float_tflite"
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
PREDICTIONS_FILE = "predictions.csv"


# ---------------------------------------------------------------------------
# Export.

class ServingModule(tf.Module):
    """The serving signature around a Keras model (raw pixels in, logits out).

    `serve(images)`: images uint8 [N, H, W, C] (image_shape = (H, W, C)) ->
    {"probabilities": float32 [N, num_classes] (softmax of the logits),
     "classes": int64 [N]}.
    """

    def __init__(self, model: tf_keras.Model, image_shape: Sequence[int]):
        super().__init__(name="serving")
        # Only the variables are tracked, not the Keras model: tracking it
        # would make tf.saved_model.save trace every layer again for Keras'
        # own loader (slow for VGG16, fragile for TFMOT's wrappers), and the
        # signature is all a server needs.
        self.model_variables = list(model.variables)
        spec = tf.TensorSpec([None, *image_shape], tf.uint8, name="images")

        @tf.function(input_signature=[spec])
        def serve(images):
            logits = tf.cast(model(tf.cast(images, tf.float32), training=False), tf.float32)
            return {"probabilities": tf.nn.softmax(logits, axis=-1),
                    "classes": tf.argmax(logits, axis=-1, output_type=tf.int64)}

        self.serve = serve


def write_saved_model(model: tf_keras.Model, image_shape: Sequence[int],
                      path: pathlib.Path) -> None:
    """Writes `model` as a SavedModel at `path` with the serving_default
    signature of ServingModule."""
    module = ServingModule(model, image_shape)
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})


def _float32_config(config: Any) -> Any:
    """A Keras config with every dtype policy (mixed_float16, mixed_bfloat16)
    replaced by "float32"."""
    if isinstance(config, dict):
        if config.get("class_name") in ("Policy", "DTypePolicy") \
                and isinstance(config.get("config"), dict):
            return "float32"
        return {key: _float32_config(value) for key, value in config.items()}
    if isinstance(config, list):
        return [_float32_config(value) for value in config]
    return config


def float32_model(model: tf_keras.Model) -> tf_keras.Model:
    """`model` itself where it computes in float32; else (a run with
    mixed_precision) a float32 copy with the same weights, since TFLite has
    no kernels for bfloat16 or float16 ops."""
    config = model.get_config()
    float32 = _float32_config(config)
    if float32 == config:
        return model
    with speed.precision({"mixed_precision": "float32"}):  # the models' own policies too
        copy = model.__class__.from_config(float32)
    copy.set_weights(model.get_weights())
    return copy


def class_names_of(run_config: dict, num_classes: Optional[int] = None) -> list[str]:
    """Class names in class-index order: config.json's "class_names", else the
    names of the run's dataset known here (mnist, fashion_mnist, cifar10), else
    "0".."num_classes-1" (runs made before class names were recorded)."""
    names = run_config.get("class_names")
    if not names:
        dataset = (run_config.get("hparams") or {}).get("dataset")
        names = local_files.CLASS_NAMES.get(dataset)
    if not names and num_classes:
        logging.warning("The run records no class names; classes are numbered 0..%d",
                        num_classes - 1)
        names = [str(i) for i in range(num_classes)]
    return [str(n) for n in names or []]


def _size(path: pathlib.Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


def _replace_folder(staging: pathlib.Path, final: pathlib.Path) -> None:
    """Renames `staging` to `final`; an existing `final` is replaced (moved
    aside first, then deleted)."""
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}-old-{os.getpid()}")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(staging, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def export_model(run_dir: pathlib.Path, model: tf_keras.Model, class_names: Sequence[str],
                 image_shape: Sequence[int]) -> dict[str, list[dict]]:
    """Writes run_dir/export/ for `model` (raw pixels [N, H, W, C] in, logits
    out); returns {"models": metrics.json "models" entries of the SavedModel
    and the TFLite file, "exported": [{"format", "path", "bytes"}] of every
    file}. Raises UserError if the class names do not match the model's
    outputs; TensorFlow's errors if saving or converting fails."""
    from common import export
    run_dir = pathlib.Path(run_dir)
    image_shape = [int(d) for d in image_shape]
    num_classes = int(model.output_shape[-1])
    if len(class_names) != num_classes:
        raise UserError(f"the run has {len(class_names)} class names but its model "
                        f"{num_classes} outputs; cannot write {LABELS_PATH}")
    staging = pathlib.Path(tempfile.mkdtemp(dir=run_dir, prefix=f".{EXPORT_DIR}-"))

    def inside(relative: str) -> pathlib.Path:  # where export/<x> is built
        return staging / pathlib.Path(relative).relative_to(EXPORT_DIR)

    try:
        write_saved_model(model, image_shape, inside(SAVED_MODEL_PATH))
        inside(TFLITE_PATH).write_bytes(export.to_tflite(float32_model(model)))
        inside(LABELS_PATH).write_text("".join(f"{name}\n" for name in class_names))
        os.chmod(staging, 0o755)  # mkdtemp makes it private; exports are for reading
        _replace_folder(staging, run_dir / EXPORT_DIR)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    models = [saved_runs.declare(run_dir, SAVED_MODEL_NAME, run_dir / SAVED_MODEL_PATH),
              saved_runs.declare(run_dir, TFLITE_NAME, run_dir / TFLITE_PATH)]
    exported = [{k: entry[k] for k in ("format", "path", "bytes")} for entry in models]
    exported.append({"format": "labels", "path": LABELS_PATH,
                     "bytes": _size(run_dir / LABELS_PATH)})
    return {"models": models, "exported": exported}


def export(run_dir: pathlib.Path, entry: dict, class_names: Sequence[str],
           image_shape: Sequence[int]) -> dict[str, list[dict]]:
    """Loads the run's model declared by `entry` (a metrics.json "models"
    entry, keras or h5, within its load_scope) and writes export/ for it;
    returns what export_model() returns. Raises UserError if the model
    cannot be loaded."""
    model = saved_runs.load_entry(pathlib.Path(run_dir), entry, compile=False)
    return export_model(run_dir, model, class_names, image_shape)


def export_after_training(run_dir: pathlib.Path, entry: dict, class_names: Sequence[str],
                          image_shape: Sequence[int]) -> dict[str, Any]:
    """export() for the end of a training run, which must not lose the
    trained run: a failure is logged and recorded as "export_error" (the
    run still finishes; --mode=export retries it) instead of raised."""
    try:
        outcome = export(run_dir, entry, class_names, image_shape)
    except Exception as e:  # pylint: disable=broad-except
        message = f"{type(e).__name__}: {_first_line(e)}"
        logging.warning("Exporting the serving files failed (%s); the run is kept: retry "
                        "with --mode=export --run_name=%s", message, pathlib.Path(run_dir).name)
        return {"models": [], "exported": [], "export_error": message}
    logging.info("Exported %s (TensorFlow Serving), %s and %s", run_dir / SAVED_MODEL_PATH,
                 TFLITE_PATH, LABELS_PATH)
    return outcome


def _first_line(e: BaseException) -> str:
    text = getattr(e, "message", None) or str(e)
    text = re.sub(r"\{\{function_node [^}]*\}\}\s*|\s*\[Op:\w+\]", "", text).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:300]


def _is_exported(entry: dict) -> bool:
    return pathlib.PurePath(entry.get("path", "")).parts[:1] == (EXPORT_DIR,)


def export_run(options: RunOptions, config: dict) -> dict[str, Any]:
    """--mode=export: writes export/ for the finished run --run_name (again,
    if it has one) and rewrites its metrics.json with the exported models;
    returns the new metrics. Raises UserError for a missing or unfinished
    run, or a model that cannot be loaded."""
    del config  # the run's own config.json says what it was trained on
    run_dir = saved_runs.run_folder(options.results_dir, options.experiment, options.run_name)
    lock = results.Lock(run_dir, "run").acquire()
    try:
        run_config = saved_runs.read_config(run_dir)
        metrics = saved_runs.read_metrics(run_dir)
        entries = [e for e in saved_runs.declared_models(run_dir)
                   if e["format"] in ("keras", "h5")]
        if not entries:
            raise UserError(f"run {run_dir} declares no Keras model to export")
        entry = next((e for e in entries if e.get("name") == "model"), entries[0])
        model = saved_runs.load_entry(run_dir, entry, compile=False)
        image_shape = run_config.get("image_shape") or list(model.input_shape[1:])
        names = class_names_of(run_config, int(model.output_shape[-1]))
        outcome = export_model(run_dir, model, names, image_shape)
        metrics["models"] = ([e for e in metrics.get("models") or [entry]
                              if not _is_exported(e)] + outcome["models"])
        metrics["exported"] = outcome["exported"]
        metrics.pop("export_error", None)
        results.write_json_atomic(run_dir / results.METRICS_FILE, metrics)
    finally:
        lock.release()
    for item in outcome["exported"]:
        print(f"exported {run_dir / item['path']} ({item['format']}, {item['bytes']:,} bytes)")
    return metrics


# ---------------------------------------------------------------------------
# Prediction.

class ImageSkipped(Exception):
    """A file that cannot be used as an image; the message says why."""


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
        images = [p for p in files if p.suffix.lower() in IMAGE_EXTENSIONS]
        if len(images) < len(files):
            logging.info("Ignored %d file(s) in %s without an image extension (%s)",
                         len(files) - len(images), path, ", ".join(IMAGE_EXTENSIONS))
        if not images:
            raise UserError(f"--inputs={inputs}: the folder holds no image files "
                            f"({', '.join(IMAGE_EXTENSIONS)})")
        return images
    if glob.has_magic(str(path)):
        matches = sorted(pathlib.Path(p) for p in glob.glob(str(path), recursive=True))
        files = [p for p in matches if p.is_file()]
        if not files:
            raise UserError(f"--inputs={inputs}: the pattern matches no file")
        return files
    raise UserError(f"--inputs={inputs}: no such file or folder")


def decode(data: bytes) -> tf.Tensor:
    """PNG, JPEG, BMP or GIF (first frame) bytes -> uint8 [H, W, C], C as
    stored (1 grey, 2 grey+alpha, 3 RGB, 4 RGBA; palettes expanded).
    Raises ImageSkipped for anything else or a damaged file."""
    try:
        image = tf.io.decode_image(data, channels=0, dtype=tf.uint8, expand_animations=False)
    except (tf.errors.OpError, ValueError) as e:
        raise ImageSkipped(f"not an image TensorFlow can decode ({_first_line(e)})") from None
    if image.shape.rank != 3 or 0 in image.shape:
        raise ImageSkipped(f"an empty image ({image.shape})")
    return image


def convert(image: tf.Tensor, image_shape: Sequence[int]) -> tuple[np.ndarray, list[str]]:
    """A decoded uint8 [h, w, c] image as the model's input, the way the
    training data looked: uint8 [H, W, C] (image_shape), and notes saying
    what was done. Alpha is flattened onto black (the colour is multiplied
    by the opacity: MNIST-style data is light on black); RGB becomes grey
    (ITU-R 601 luma, tf.image.rgb_to_grayscale) for a grey model and grey
    becomes RGB for a colour one; another size is resized to H x W, the
    aspect ratio not kept (area averaging to shrink, which is exact for a
    whole-number factor; bilinear to enlarge). Raises ImageSkipped for a
    channel count that cannot be converted."""
    notes = []
    height, width, want = (int(d) for d in image_shape)
    if image.shape[-1] in (2, 4):
        colour = tf.cast(image[..., :-1], tf.float32)
        alpha = tf.cast(image[..., -1:], tf.float32) / 255.0
        image = tf.cast(tf.round(colour * alpha), tf.uint8)
        notes.append("alpha flattened")
    have = image.shape[-1]
    if have == 3 and want == 1:
        image = tf.image.rgb_to_grayscale(image)
        notes.append("RGB to grey")
    elif have == 1 and want == 3:
        image = tf.image.grayscale_to_rgb(image)
        notes.append("grey to RGB")
    elif have != want:
        raise ImageSkipped(f"{have} channels; the model takes {want}")
    if tuple(image.shape[:2]) != (height, width):
        shrink = image.shape[0] >= height and image.shape[1] >= width
        notes.append(f"resized {image.shape[1]}x{image.shape[0]} to {width}x{height}")
        resized = tf.image.resize(image, (height, width), method="area" if shrink else "bilinear")
        image = tf.cast(tf.clip_by_value(tf.round(resized), 0, 255), tf.uint8)
    return image.numpy(), notes


def load_image(path: pathlib.Path, image_shape: Sequence[int]) -> tuple[np.ndarray, list[str]]:
    """The file at `path` as the model's input: convert(decode(bytes)).
    Raises ImageSkipped if it cannot be read or used."""
    try:
        data = pathlib.Path(path).read_bytes()
    except OSError as e:
        raise ImageSkipped(f"cannot read it ({e.strerror or e})") from None
    return convert(decode(data), image_shape)


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
        served = [e for e in saved_runs.declared_models(run_dir) if e["format"] == "saved_model"]
        self._serve = self._model = None
        if served:
            path = run_dir / served[0]["path"]
            try:
                self._serve = tf.saved_model.load(str(path)).signatures["serving_default"]
                specs = list(self._serve.structured_input_signature[1].values())
                outputs = self._serve.structured_outputs["probabilities"]
            except (OSError, KeyError, IndexError, ValueError, tf.errors.OpError) as e:
                raise UserError(f"cannot load the SavedModel {path}: {_first_line(e)}") from None
            self.image_shape = tuple(int(d) for d in specs[0].shape[1:])
            self.num_classes = int(outputs.shape[-1])
            self.source = f"SavedModel {path}"
        else:
            self._model = saved_runs.load_keras_model(run_dir, compile=False)
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
        except ImageSkipped as e:
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
        raise results.os_error(e, "write the predictions") from None


def predict_run(options: RunOptions, config: dict) -> dict[str, Any]:
    """--mode=predict: the model of the finished run --run_name on the image
    files --inputs names, in batches of config["batch_size"]; prints a
    table (file, class, probability, --top_k more, note) and writes it as
    CSV to --output (default: predictions.csv in the run folder).

    Returns {"run", "model", "output", "predictions": [{"file", "top":
    [[class, probability], ...], "note"}], "skipped": count}. Raises
    UserError for a missing or unfinished run, no image file at --inputs,
    --top_k above the number of classes, or no file that could be read.
    """
    run_dir = saved_runs.run_folder(options.results_dir, options.experiment, options.run_name)
    paths = find_images(options.inputs)
    classifier = Classifier(run_dir)
    names = _labels(run_dir, classifier)
    if options.top_k > classifier.num_classes:
        raise UserError(f"--top_k={options.top_k} is more than the model's "
                        f"{classifier.num_classes} classes")
    logging.info("Predicting %d file(s) with the %s", len(paths), classifier.source)
    rows = predict_files(classifier, names, paths, config["batch_size"], options.top_k)
    output = pathlib.Path(options.output).expanduser() if options.output \
        else run_dir / PREDICTIONS_FILE
    write_csv(output, rows, options.top_k)
    print(format_table(rows, options.top_k))
    skipped = sum(row.skipped for row in rows)
    print(f"{len(rows) - skipped} predicted, {skipped} skipped; wrote {output}")
    if skipped == len(rows):
        raise UserError(f"--inputs={options.inputs}: none of the {len(rows)} file(s) "
                        "could be read as an image (see the skipped rows above)")
    return {"run": str(run_dir), "model": classifier.source, "output": str(output),
            "predictions": [{"file": r.file, "top": [list(t) for t in r.top], "note": r.note}
                            for r in rows],
            "skipped": skipped}


def _labels(run_dir: pathlib.Path, classifier: Classifier) -> list[str]:
    """Class names for the classifier's outputs: export/labels.txt when the
    SavedModel serves, else the run's config.json. Raises UserError if
    their count is not the model's."""
    labels = run_dir / LABELS_PATH
    if classifier.serves_saved_model and labels.is_file():
        names = labels.read_text().splitlines()
        where = str(labels)
    else:
        names = class_names_of(saved_runs.read_config(run_dir), classifier.num_classes)
        where = str(run_dir / results.CONFIG_FILE)
    if len(names) != classifier.num_classes:
        raise UserError(f"{where} has {len(names)} class names but the model has "
                        f"{classifier.num_classes} classes")
    return names
