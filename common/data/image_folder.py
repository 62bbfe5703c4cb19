"""Your own images: `--dataset=image_folder --data_dir=PATH`.

Two layouts, found by themselves:

  PATH/<class>/<images>           one folder per class; every class is split
                                  into test (`test_fraction` of it), then
                                  validation (`validation_fraction` of the
                                  rest) and train (the rest), stratified
  PATH/train/<class>/...          the layout of TFDS' ImageFolder; without
  PATH/test/<class>/...           validation/ the validation split is carved
  [PATH/validation/<class>/...]   from train, per class, as above

Class names are the class folders' names, sorted (Python's order); images
may sit in sub-folders of a class folder. PNG, JPEG, BMP and GIF files
(by extension: .png .jpg .jpeg .bmp .gif; the format itself is read from the
file's first bytes) are decoded with Pillow, by a pool of threads (Pillow
decodes without the GIL; TensorFlow's eager decode_image took twice as long
per small file here, in Python overhead); a GIF's first frame; a JPEG turned
upright by its EXIF orientation. Hidden files and folders (a leading dot) are
ignored. Carving is deterministic: inside a class, files are ordered by a
salted hash of their path (`SPLIT_SEED`), so a file keeps its split when
others are added.

Every image is converted to `image_channels` (1 grey, 3 RGB; 0: grey when
every image is grey, else RGB): an alpha channel is composited over black
(premultiplied; palette images are expanded first, 16-bit grey scaled to 8
bits, CMYK to RGB), RGB becomes grey by ITU-R 601 luma
(tf.image.rgb_to_grayscale's weights), grey becomes RGB by copying. Then it
is resized to `image_size` x `image_size` (Pillow's bilinear filter, which is
antialiased when shrinking; the aspect ratio is not kept), or, with
image_size 0, kept at its own size, which every image must then share.

Before training, one cleaning pass builds a report (common/data/image_report.py;
common/training/run.py writes it as data_report.json into the run folder; a
summary is logged):
  - files that cannot be used: empty, not an image, truncated or corrupt,
    unsupported extension, outside a class folder: skipped, each with why;
  - exact duplicates by decoded pixels: within a class and split, kept once;
    across classes (conflicting labels): every copy dropped; across splits
    (an evaluation image that is also a training image): removed from the
    evaluation split, since it would inflate its accuracy;
  - counts per class and split; the largest against the smallest training
    class (at IMBALANCE_RATIO or more, a warning);
  - sizes, channel modes and formats seen; how many images were converted.
A class without an image in every split is a UserError naming it; so are an
empty folder, one without class folders, and a single class.

Decoded, converted images are cached on disk (common/data/image_cache.py:
CACHE_ENV, else $XDG_CACHE_HOME or ~/.cache, under
keras-experiments/image_folder/), keyed by the folder, every image file's
path, size and modification time, and the target size and channels: a
second run or a sweep's next trial reads one .npz instead of decoding; any
change to the folder's images invalidates it. The training pipeline
(common/data/pipeline.py) then batches and prefetches as for every source.
The whole converted folder is held in memory, as for the other local
sources: for large folders keep image_size modest.
"""

import dataclasses
import hashlib
import math
import os
import pathlib
from typing import Optional

import numpy as np
import tensorflow as tf

from common.data import image_cache, image_report, images
from common.data.image_cache import CACHE_ENV  # noqa: F401  (re-exported)
from common.data.image_report import SPLITS
from common.data.splits import Splits, check_class_names
from common.errors import UserError

DATASET = "image_folder"
EXTENSIONS = images.EXTENSIONS
SPLIT_SEED = 0             # salt of the hash that orders a class's files for carving


@dataclasses.dataclass(frozen=True)
class _File:
    """One image file found under the folder."""
    path: str
    rel: str                  # relative to the folder, with forward slashes
    split: Optional[str]      # its split folder (train/validation/test layout), else None
    label: str                # its class folder's name
    size: int                 # bytes
    mtime_ns: int


@dataclasses.dataclass
class _Scan:
    folder: pathlib.Path
    layout: str               # "class_folders" or "split_folders"
    classes: list[str]
    split_folders: list[str]  # "train", "test"[, "validation"]: split_folders layout
    files: list[_File]
    skipped: list[dict]       # files skipped before decoding, with the reason


# ---------------------------------------------------------------------------
# Finding the files.

def _visible(entries) -> list[pathlib.Path]:
    return sorted((e for e in entries if not e.name.startswith(".")), key=lambda p: p.name)


def _describe_layouts(folder: pathlib.Path) -> str:
    return (f"expected class folders of images ({folder}/<class>/<image>) or "
            f"{folder}/train/<class>/... and {folder}/test/<class>/...")


def scan(folder: pathlib.Path) -> _Scan:
    """Finds the layout, the classes and every file under `folder`; raises
    UserError for an empty folder, no class folders, one class, or a mix of
    split and class folders.

    Nothing is decoded here: a file is kept by its extension (EXTENSIONS)
    and stat()ed; files with another extension, files that cannot be
    stat()ed and files outside a class folder are listed as skipped, with
    the reason. Hidden files and folders are ignored.

    Args:
        folder: the image folder (--data_dir), resolved.

    Returns:
        A _Scan: `folder`; `layout` ("class_folders" or "split_folders");
        `classes` (the class folders' names, sorted, over every split);
        `split_folders` (the split folders present, by name); `files` (one
        _File per image file: split by split in SPLITS order, class folder
        by class folder by name, then os.walk's top-down order with names
        sorted); `skipped` ([{"file", "reason"}]).

    Raises:
        UserError: the folder cannot be read or is empty; split folders
            (train, validation, test) sit beside other folders; the split
            layout lacks train/ or test/; there is no class folder, or only
            one class.
    """
    try:
        top = _visible(folder.iterdir())
    except OSError as e:
        raise UserError(f"cannot read --data_dir {folder}: {e.strerror}") from None
    if not top:
        raise UserError(f"--data_dir {folder} is empty; {_describe_layouts(folder)}")
    subfolders = [p for p in top if p.is_dir()]
    loose = [p for p in top if not p.is_dir()]
    skipped = [{"file": p.name, "reason": "not inside a class folder"} for p in loose]
    split_names = [p.name for p in subfolders if p.name in SPLITS]
    if split_names:
        others = [p.name for p in subfolders if p.name not in SPLITS]
        if others:
            raise UserError(f"--data_dir {folder} mixes split folders ({', '.join(split_names)}) "
                            f"with other folders ({', '.join(others[:5])}); use "
                            f"{folder}/<class>/... or only train/, test/ and validation/")
        missing = [s for s in ("train", "test") if s not in split_names]
        if missing:
            raise UserError(f"--data_dir {folder} has {'/, '.join(split_names)}/ but no "
                            f"{missing[0]}/; the split layout needs train/ and test/ "
                            "(validation/ is optional)")
        class_dirs = []
        for split in SPLITS:
            if split not in split_names:
                continue
            entries = _visible((folder / split).iterdir())
            skipped += [{"file": f"{split}/{p.name}", "reason": "not inside a class folder"}
                        for p in entries if not p.is_dir()]
            class_dirs += [(split, p) for p in entries if p.is_dir()]
        layout = "split_folders"
    else:
        class_dirs = [(None, p) for p in subfolders]
        layout = "class_folders"
    classes = sorted({p.name for _, p in class_dirs})
    where = f"{folder}/train, test" if layout == "split_folders" else str(folder)
    if not classes:
        found = f" (found {len(loose)} files directly in it)" if loose else ""
        raise UserError(f"--data_dir {where} has no class folders{found}; put each "
                        f"class's images in a folder named after the class: "
                        f"{_describe_layouts(folder)}")
    check_class_names(classes, f"--data_dir {where}")
    if len(classes) == 1:
        raise UserError(f"--data_dir {where} has one class folder ({classes[0]}/); a "
                        "classifier needs at least two classes")
    files = []
    prefix = len(os.path.join(str(folder), ""))
    for split, class_dir in class_dirs:
        for root, dirs, names in os.walk(class_dir):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in sorted(names):
                if name.startswith("."):
                    continue
                path = os.path.join(root, name)  # strings: pathlib is slow for 100k files
                rel = path[prefix:].replace(os.sep, "/")
                extension = os.path.splitext(name)[1].lower()
                if extension not in EXTENSIONS:
                    skipped.append({"file": rel, "reason": f"unsupported extension "
                                    f"{extension or '(none)'!r} (reads "
                                    f"{', '.join(sorted(EXTENSIONS))})"})
                    continue
                try:
                    stat = os.stat(path)
                except OSError as e:
                    skipped.append({"file": rel, "reason": f"unreadable: {e.strerror}"})
                    continue
                files.append(_File(path, rel, split, class_dir.name, stat.st_size,
                                   stat.st_mtime_ns))
    return _Scan(folder, layout, classes, split_names, files, skipped)


# ---------------------------------------------------------------------------
# Cleaning and carving.

def _round(x: float) -> int:
    return int(math.floor(x + 0.5))


def _carve(rels: list[str], fraction: float, keep: int) -> tuple[list[str], list[str]]:
    """Splits `rels` (one class's files) into (held out, rest): the held-out
    share is `fraction` of them, at least 1, leaving at least `keep`."""
    ordered = sorted(rels, key=lambda rel: hashlib.sha256(f"{SPLIT_SEED}/{rel}".encode())
                     .hexdigest())
    held = min(max(1, _round(len(ordered) * fraction)), len(ordered) - keep)
    return ordered[:held], ordered[held:]


def _clean(scanned: _Scan, records: list[dict]) -> tuple[dict[str, str], dict]:
    """Drops duplicates: returns ({file: split or "" for class folders} of
    the files kept, the duplicates' report)."""
    by_file = {f.rel: f for f in scanned.files}
    groups: dict[str, list[str]] = {}
    for record in records:
        if "reason" not in record:
            groups.setdefault(record["digest"], []).append(record["file"])
    kept: dict[str, str] = {}
    within, across_classes, across_splits = [], [], []
    for rels in groups.values():
        labels = sorted({by_file[rel].label for rel in rels})
        if len(labels) > 1:
            across_classes.append({"classes": labels, "files": sorted(rels)})
            continue
        per_split: dict[str, list[str]] = {}
        for rel in sorted(rels):
            per_split.setdefault(by_file[rel].split or "", []).append(rel)
        for split, copies in per_split.items():
            if len(copies) > 1:
                within.append({"class": labels[0], "kept": copies[0], "dropped": copies[1:]})
        if "train" in per_split and len(per_split) > 1:
            for split in ("validation", "test"):
                if split in per_split:
                    across_splits.append({"class": labels[0], "split": split,
                                          "removed": per_split.pop(split)[0],
                                          "train_copy": per_split["train"][0]})
        for split, copies in per_split.items():
            kept[copies[0]] = split
    duplicates = {"within_class": within, "across_classes": across_classes,
                  "across_splits": across_splits}
    return kept, duplicates


def _assign(scanned: _Scan, kept: dict[str, str], test_fraction: float,
            validation_fraction: float) -> dict[str, dict[str, list[str]]]:
    """{split: {class: [files]}}; raises UserError naming every class that
    cannot have an image in every split."""
    by_file = {f.rel: f for f in scanned.files}
    available: dict[str, dict[str, list[str]]] = {}
    for rel, split in kept.items():
        available.setdefault(split, {}).setdefault(by_file[rel].label, []).append(rel)
    assigned = {split: {} for split in SPLITS}
    short = []
    for name in scanned.classes:
        if scanned.layout == "class_folders":
            rels = available.get("", {}).get(name, [])
            if len(rels) < 3:
                short.append(f"{name!r} has {len(rels)} usable image(s), needs 3 (one for "
                             "each of train, validation, test)")
                continue
            test, rest = _carve(rels, test_fraction, keep=2)
            validation, train = _carve(rest, validation_fraction, keep=1)
        else:
            train = available.get("train", {}).get(name, [])
            test = available.get("test", {}).get(name, [])
            validation = available.get("validation", {}).get(name, [])
            carve = "validation" not in scanned.split_folders
            missing = [f"{split}/ has {len(rels)}" for split, rels, needed in (
                ("train", train, 2 if carve else 1), ("validation", validation, 0 if carve else 1),
                ("test", test, 1)) if len(rels) < needed]
            if missing:
                short.append(f"{name!r}: {', '.join(missing)} usable image(s)"
                             + (" (train needs 2: validation is carved from it)"
                                if carve and len(train) < 2 else ""))
                continue
            if carve:
                validation, train = _carve(train, validation_fraction, keep=1)
        for split, rels in (("train", train), ("validation", validation), ("test", test)):
            assigned[split][name] = sorted(rels)
    if short:
        raise UserError(f"too few images to put every class in every split in "
                        f"{scanned.folder}: {'; '.join(short)}; add images, or remove "
                        "these class folders")
    return assigned


# ---------------------------------------------------------------------------
# The entry point.

def load(data_dir: Optional[str], *, validation_fraction: float = 0.1,
         test_fraction: float = 0.1, image_size: int = 0,
         image_channels: int = 0) -> Splits:
    """Reads, cleans, checks and splits the image folder `data_dir`.

    Scans the folder (scan()), decodes it or reads it from the cache
    (image_cache.decoded()), drops duplicates, carves the splits (see the
    module docstring) and logs the report's summary (also when a class
    is too small, before the error).

    Args:
        data_dir: the image folder (--data_dir); "~" is expanded.
        validation_fraction: share of each class's training images held out
            for validation, in (0, 1); unused where validation/ exists.
        test_fraction: class-folder layout only: share of each class's
            images held out for testing, in (0, 1).
        image_size: images resized to image_size x image_size pixels; 0:
            their own size, which they must share.
        image_channels: 1 grey, 3 RGB; 0: grey if every image is grey, else
            RGB.

    Returns:
        Splits of (image uint8 [H, W, C]: image_size x image_size, or the
        images' own size with image_size 0; C 1 or 3; label int64, the
        index of the class in sorted-class-name order), with `class_names`
        and `report` (what data_report.json holds; image_report.build()).

    Raises:
        UserError: no `data_dir`, or one that does not exist or is not a
            folder; a fraction outside (0, 1); image_channels not 0, 1 or 3;
            a negative image_size; an empty folder, no class folders, one
            class, or a bad split layout (scan()); images of different sizes
            with image_size 0; a class without enough usable images for an
            image in every split (the message names every such class).
    """
    if not data_dir:
        raise UserError(f"--dataset={DATASET} needs --data_dir=PATH, a folder of class "
                        "folders of images (PATH/<class>/<image>, or PATH/train/<class>/"
                        "... and PATH/test/<class>/...)")
    folder = pathlib.Path(data_dir).expanduser().resolve()
    if not folder.is_dir():
        raise UserError(f"--data_dir {data_dir} does not exist or is not a folder")
    for name, value in (("validation_fraction", validation_fraction),
                        ("test_fraction", test_fraction)):
        if not 0 < value < 1:
            raise UserError(f"{name} must be between 0 and 1, got {value}")
    if image_channels not in (0, 1, 3):
        raise UserError(f"image_channels must be 0 (the folder's), 1 (grey) or 3 (RGB), "
                        f"got {image_channels}")
    if image_size < 0:
        raise UserError(f"image_size must be 0 (the images' own) or a size, got {image_size}")
    scanned = scan(folder)
    records, images, cache = image_cache.decoded(scanned, image_channels, image_size)
    kept, duplicates = _clean(scanned, records)
    index = {}
    for record in records:
        if "reason" not in record:
            index[record["file"]] = len(index)
    target = (tuple(images.shape[1:]) if len(images)
              else (image_size, image_size, image_channels or 1))
    fractions = {"seed": SPLIT_SEED, "validation_fraction": validation_fraction,
                 "test_fraction": test_fraction if scanned.layout == "class_folders" else None,
                 "validation_from": ("validation/" if "validation" in scanned.split_folders
                                     else "train")}
    try:
        assigned = _assign(scanned, kept, test_fraction, validation_fraction)
    except UserError:
        failed = {split: {} for split in SPLITS}
        image_report.log_summary(image_report.build(scanned, records, duplicates, failed, target,
                                                    fractions, cache))
        raise
    report = image_report.build(scanned, records, duplicates, assigned, target, fractions, cache)
    image_report.log_summary(report)
    label_of = {name: i for i, name in enumerate(scanned.classes)}

    def split(name):
        rels = [(rel, label_of[label]) for label, files in assigned[name].items()
                for rel in files]
        x = images[[index[rel] for rel, _ in rels]] if rels else images[:0]
        y = np.array([label for _, label in rels], np.int64)
        return tf.data.Dataset.from_tensor_slices((x, y)), len(rels)

    (train, n_train), (validation, n_val), (test, n_test) = map(split, SPLITS)
    return Splits(
        train=train, validation=validation, test=test,
        num_train=n_train, num_validation=n_val, num_test=n_test,
        image_shape=tuple(int(d) for d in target), num_classes=len(scanned.classes),
        source=str(folder), class_names=tuple(scanned.classes), report=report)
