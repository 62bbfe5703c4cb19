"""A run's serving files (export/): SavedModel, float TFLite, labels.

What `export()` writes into a run folder (at the end of every plain training
run, not a sweep's trials; or later with `--mode=export --run_name=RUN`):

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
                               [1, num_classes] out; converted in float32
                               whatever the run's mixed_precision
    export/labels.txt          the class names, one a line, in class-index order

metrics.json declares the SavedModel and the TFLite file in "models" (so
--mode=eval scores them too) and lists every exported file under
"exported" (format, path, bytes). The files are built in a hidden staging
folder and renamed into place before metrics.json is rewritten (atomically),
so metrics.json never declares a file that is not there.

--mode=export is common/modes/export.py; predictions on image files are
common/deploy/predict.py's.
"""

import os
import pathlib
import shutil
import tempfile
from typing import Any, Iterable, Optional, Sequence

from absl import logging
import numpy as np
import tensorflow as tf
import tf_keras

from common.data import local_files
from common.data.splits import check_class_names
from common.deploy import tflite
from common.errors import UserError, one_line
from common.runs import saved
from common.training import evaluation

EXPORT_DIR = "export"
SAVED_MODEL_PATH = "export/saved_model/1"       # TF Serving: <base path>/<version>/
TFLITE_PATH = "export/model_float.tflite"
LABELS_PATH = "export/labels.txt"
# Names of the exported models in metrics.json's "models".
SAVED_MODEL_NAME = "export_saved_model"
TFLITE_NAME = "export_float_tflite"


class ServingModule(tf.Module):
    """The serving signature around a Keras model that takes float32 raw
    pixels and returns logits.

    `serve(images)`: images uint8 [N, H, W, C] (image_shape = (H, W, C);
    any other shape, an unbatched image among them, fails with an
    InvalidArgumentError that names the expected shape), cast to float32 for
    the model (training=False) ->
    {"probabilities": float32 [N, num_classes] (softmax of the logits, cast
    to float32), "classes": int64 [N] (the argmax)}.

    Args:
        model: the Keras model: float32 [N, H, W, C] pixel values 0..255 in,
            logits [N, num_classes] out (any float dtype).
        image_shape: (H, W, C) of the signature's images.

    Attributes:
        model_variables: the model's variables, tracked in place of the
            Keras model itself (see the comment in __init__).
        serve: the tf.function with the serving signature.
    """

    def __init__(self, model: tf_keras.Model, image_shape: Sequence[int]):
        super().__init__(name="serving")
        # Only the variables are tracked, not the Keras model: tracking it
        # would make tf.saved_model.save trace every layer again for Keras'
        # own loader (slow for VGG16, fragile for TFMOT's wrappers), and the
        # signature is all a server needs.
        self.model_variables = list(model.variables)
        spec = tf.TensorSpec([None, *image_shape], tf.uint8, name="images")

        expected = [int(d) for d in image_shape]
        message = (f"images must be uint8 [N, {', '.join(map(str, expected))}] (a batch of "
                   "raw-pixel images); got shape")

        @tf.function(input_signature=[spec])
        def serve(images):
            # A server does not hold a request to the signature's shape: an
            # unbatched image reached oneDNN's convolution and aborted the
            # process (tensorflow/serving#2104). Checked here, it is an
            # InvalidArgumentError (HTTP 400) instead. The check reads the
            # shape at run time (padded, so a rank below 4 compares too).
            shape = tf.shape(images)
            fits = tf.logical_and(
                tf.equal(tf.size(shape), 4),
                tf.reduce_all(tf.equal(tf.concat([shape, [0, 0, 0, 0]], 0)[1:4], expected)))
            with tf.control_dependencies([tf.debugging.Assert(fits, [message, shape])]):
                images = tf.identity(images)
            logits = tf.cast(model(tf.cast(images, tf.float32), training=False), tf.float32)
            return {"probabilities": tf.nn.softmax(logits, axis=-1),
                    "classes": tf.argmax(logits, axis=-1, output_type=tf.int64)}

        self.serve = serve


def write_saved_model(model: tf_keras.Model, image_shape: Sequence[int],
                      path: pathlib.Path) -> None:
    """Writes `model` as a SavedModel at `path` with the serving_default
    signature of ServingModule.

    Args:
        model: the Keras model (float32 raw pixels in, logits out).
        image_shape: (H, W, C) of the signature's uint8 images.
        path: the SavedModel folder to write (created with its parents).
    """
    module = ServingModule(model, image_shape)
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})


def class_names_of(run_config: dict, num_classes: Optional[int] = None) -> list[str]:
    """Class names in class-index order: config.json's "class_names", else the
    names of the run's dataset known here (mnist, fashion_mnist, cifar10), else
    "0".."num_classes-1" (runs made before class names were recorded).

    Args:
        run_config: the run's config.json (its "class_names", and
            "hparams"'s "dataset").
        num_classes: the model's number of outputs, for the numbered
            fallback (logged as a warning); None or 0: no fallback.

    Returns:
        The names as strings; their count is not checked against
        num_classes. Empty if none is known and there is no fallback.

    Raises:
        UserError: config.json's "class_names" is not a list of strings.
    """
    names = run_config.get("class_names")
    if names is not None and not (isinstance(names, list)
                                  and all(isinstance(n, str) for n in names)):
        raise UserError("the run's config.json is damaged: its class_names is not a list of "
                        "names")
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
    """Writes run_dir/export/ for `model`: SavedModel, float TFLite and
    labels.txt, built in a hidden staging folder in run_dir that then
    replaces any previous export/. metrics.json is not touched.

    Args:
        run_dir: the run's folder.
        model: the Keras model: float32 raw pixels [N, H, W, C] in, logits
            [N, num_classes] out.
        class_names: the class names in class-index order, one per output.
        image_shape: (H, W, C) of the SavedModel signature's images.

    Returns:
        {"models": the metrics.json "models" entries of the SavedModel and
        the TFLite file (name, format, path relative to run_dir, bytes),
        "exported": [{"format", "path", "bytes"}] of those two and of
        labels.txt ("labels")}.

    Raises:
        UserError: the number of class names is not the model's number of
            outputs, a class name is not one line of text, or image_shape
            is not the model's input shape (before anything is written).
        OSError: the files cannot be written or moved into place.
        Exception: whatever TensorFlow raises if saving the SavedModel or
            converting to TFLite fails. The staging folder is removed
            whether or not an error is raised.
    """
    run_dir = pathlib.Path(run_dir)
    expected = [d for d in model.input_shape[1:]]
    if not (isinstance(image_shape, (list, tuple)) and len(image_shape) == len(expected)
            and all(isinstance(d, int) and not isinstance(d, bool) and d > 0
                    for d in image_shape)
            and all(e is None or e == d for e, d in zip(expected, image_shape))):
        raise UserError(f"the run's image shape {image_shape!r} is not its model's input "
                        f"shape {tuple(expected)}; cannot export it")
    image_shape = [int(d) for d in image_shape]
    num_classes = int(model.output_shape[-1])
    if not isinstance(class_names, (list, tuple)) or len(class_names) != num_classes:
        count = len(class_names) if isinstance(class_names, (list, tuple)) else "no list of"
        raise UserError(f"the run has {count} class names but its model "
                        f"{num_classes} outputs; cannot write {LABELS_PATH}")
    check_class_names(class_names, f"run {run_dir}")
    staging = pathlib.Path(tempfile.mkdtemp(dir=run_dir, prefix=f".{EXPORT_DIR}-"))

    def inside(relative: str) -> pathlib.Path:  # where export/<x> is built
        return staging / pathlib.Path(relative).relative_to(EXPORT_DIR)

    try:
        write_saved_model(model, image_shape, inside(SAVED_MODEL_PATH))
        inside(TFLITE_PATH).write_bytes(tflite.to_tflite(model))
        inside(LABELS_PATH).write_text("".join(f"{name}\n" for name in class_names))
        os.chmod(staging, 0o755)  # mkdtemp makes it private; exports are for reading
        _replace_folder(staging, run_dir / EXPORT_DIR)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    models = [saved.declare(run_dir, SAVED_MODEL_NAME, run_dir / SAVED_MODEL_PATH),
              saved.declare(run_dir, TFLITE_NAME, run_dir / TFLITE_PATH)]
    exported = [{k: entry[k] for k in ("format", "path", "bytes")} for entry in models]
    exported.append({"format": "labels", "path": LABELS_PATH,
                     "bytes": _size(run_dir / LABELS_PATH)})
    return {"models": models, "exported": exported}


def export(run_dir: pathlib.Path, entry: dict, class_names: Sequence[str],
           image_shape: Sequence[int], scope=None) -> dict[str, list[dict]]:
    """Loads the run's model declared by `entry` (not compiled, within
    `scope` where it declares a load_scope) and writes export/ for it.

    Args:
        run_dir: the run's folder.
        entry: a metrics.json "models" entry of a keras or h5 model.
        class_names: the class names in class-index order, one per output.
        image_shape: (H, W, C) of the SavedModel signature's images.
        scope: the context manager factory the model loads in (custom
            objects: the experiment's or its last stage's load_scope), or
            None.

    Returns:
        What export_model() returns.

    Raises:
        UserError: the model cannot be loaded, or see export_model().
    """
    model = saved.load_entry(pathlib.Path(run_dir), entry, compile=False, scope=scope)
    return export_model(run_dir, model, class_names, image_shape)


def export_after_training(run_dir: pathlib.Path, entry: dict, class_names: Sequence[str],
                          image_shape: Sequence[int], scope=None) -> dict[str, Any]:
    """export() for the end of a training run, which must not lose the
    trained run: any failure is logged as a warning and returned as
    "export_error" (the run still finishes; --mode=export retries it)
    instead of raised.

    Args:
        run_dir: the run's folder.
        entry: the metrics.json "models" entry of the run's final Keras model.
        class_names: the class names in class-index order, one per output.
        image_shape: (H, W, C) of the SavedModel signature's images.
        scope: as for export().

    Returns:
        What export() returns, or after a failure {"models": [],
        "exported": [], "export_error": "<type name>: <first sentence of
        its message>"}.
    """
    try:
        outcome = export(run_dir, entry, class_names, image_shape, scope)
    except Exception as e:  # pylint: disable=broad-except
        message = f"{type(e).__name__}: {one_line(e)}"
        logging.warning("Exporting the serving files failed (%s); the run is kept: retry "
                        "with --mode=export --run_name=%s", message, pathlib.Path(run_dir).name)
        return {"models": [], "exported": [], "export_error": message}
    logging.info("Exported %s (TensorFlow Serving), %s and %s", run_dir / SAVED_MODEL_PATH,
                 TFLITE_PATH, LABELS_PATH)
    return outcome


def saved_model_scores(path: pathlib.Path,
                       batches: Iterable[tuple[np.ndarray, np.ndarray]]) -> dict:
    """Loss and accuracy through a SavedModel's serving_default signature
    (uint8 images in, "probabilities" out).

    Args:
        path: the SavedModel folder.
        batches: (images uint8 [b, H, W, C] raw pixels at the model's input
            size, labels int [b]) batches, one call of the signature each
            (e.g. data.pipeline.batches()).

    Returns:
        {"loss": mean cross-entropy (float64 math), "accuracy": top-1
        fraction, "examples": N}; loss and accuracy are NaN when N is 0.
    """
    serve = tf.saved_model.load(str(path)).signatures["serving_default"]
    scores = evaluation.RunningScores()
    for images, labels in batches:
        if len(images):
            scores.add(serve(tf.constant(images))["probabilities"].numpy(), labels)
    return scores.result()
