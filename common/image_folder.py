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

Before training, one cleaning pass builds a report (runner writes it as
data_report.json into the run folder; a summary is logged):
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

Decoded, converted images are cached on disk (CACHE_ENV, else
$XDG_CACHE_HOME or ~/.cache, under keras-experiments/image_folder/), keyed
by the folder, every image file's path, size and modification time, and the
target size and channels: a second run or a sweep's next trial reads one
.npz instead of decoding; any change to the folder's images invalidates it.
The training pipeline (data.make_pipeline) then batches and prefetches as
for every source. The whole converted folder is held in memory, as for the
other local sources: for large folders keep image_size modest.
"""

import concurrent.futures
import dataclasses
import hashlib
import io
import json
import math
import os
import pathlib
import tempfile
import time
from typing import Any, Optional

from absl import logging
import numpy as np
from PIL import Image, ImageOps
import tensorflow as tf

from common import data
from common.errors import UserError

DATASET = "image_folder"
# Hyperparameters (common/hparams.py: SHARED) this reader takes.
HPARAMS = ("image_size", "image_channels", "test_fraction")
EXTENSIONS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".bmp": "BMP", ".gif": "GIF"}
SPLITS = ("train", "validation", "test")
SPLIT_SEED = 0             # salt of the hash that orders a class's files for carving
IMBALANCE_RATIO = 5.0      # largest / smallest training class: a warning from here
CACHE_ENV = "IMAGE_FOLDER_CACHE"
CACHE_VERSION = 1
MAX_LISTED = 5             # files named per problem in the logged summary
_EXIF_ORIENTATION = 0x0112
_GREY_WEIGHTS = np.array([0.2989, 0.5870, 0.1140], np.float32)  # tf.image.rgb_to_grayscale's


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


def cache_dir() -> pathlib.Path:
    """Where decoded folders are cached: $IMAGE_FOLDER_CACHE, else
    $XDG_CACHE_HOME/keras-experiments/image_folder, else under ~/.cache."""
    if os.environ.get(CACHE_ENV):
        return pathlib.Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return pathlib.Path(base).expanduser() / "keras-experiments" / "image_folder"


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
    split and class folders."""
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
# Decoding and converting one file.

def sniff_format(payload: bytes) -> Optional[str]:
    """The image format its first bytes say (PNG, JPEG, BMP, GIF), or None."""
    if payload.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if payload.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if payload.startswith(b"BM"):
        return "BMP"
    if payload.startswith((b"GIF87a", b"GIF89a")):
        return "GIF"
    return None


def _pixels(image: Image.Image) -> tuple[np.ndarray, str]:
    """A decoded Pillow image as (uint8 [H, W, 1..4], its mode in words):
    palettes expanded (to RGBA where they have a transparent colour), 16-bit
    grey scaled to 8 bits, CMYK and other colour spaces to RGB."""
    mode = image.mode
    if mode in ("L", "LA", "RGB", "RGBA"):
        pixels = np.asarray(image)
        name = {"L": "grey", "LA": "grey+alpha"}.get(mode, mode)
    elif mode in ("P", "PA"):
        alpha = mode == "PA" or "transparency" in image.info
        pixels = np.asarray(image.convert("RGBA" if alpha else "RGB"))
        if not alpha and (pixels == pixels[..., :1]).all():
            pixels = pixels[..., :1]  # a grey palette: a grey image, exactly
        name = "palette"
    elif mode.startswith("I;16") or mode in ("I", "F"):
        wide = np.asarray(image).astype(np.float64)
        scale = 257.0 if mode.startswith("I;16") or wide.max(initial=0) > 255 else 1.0
        pixels = np.clip(np.rint(wide / scale), 0, 255).astype(np.uint8)
        name = "grey 16-bit" if scale > 1 else "grey"
    elif mode == "1":
        pixels, name = np.asarray(image.convert("L")), "bilevel"
    else:  # CMYK, YCbCr, LAB, premultiplied alpha, ...
        pixels, name = np.asarray(image.convert("RGBA" if "A" in mode else "RGB")), mode
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    return pixels, name


def resize(image: np.ndarray, size: int) -> np.ndarray:
    """uint8 [H, W, C] -> uint8 [size, size, C], by Pillow's bilinear filter,
    which widens its support when shrinking (antialiased)."""
    if image.shape[-1] == 1:
        return np.asarray(Image.fromarray(image[..., 0]).resize(
            (size, size), Image.Resampling.BILINEAR))[..., None]
    return np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BILINEAR))


def convert(image: np.ndarray, channels: int, size: int) -> tuple[np.ndarray, dict]:
    """Converts one decoded image (uint8 [H, W, 1..4]) to `channels` (1 or 3;
    0: 1 for grey and grey+alpha, else 3) and `size` x `size` (0: as is).

    Returns (uint8 [H', W', C'], what changed: {"alpha_flattened",
    "channels", "resized"} as booleans). Alpha is composited over black.
    """
    changed = {"alpha_flattened": False, "channels": False, "resized": False}
    if image.shape[-1] in (2, 4):
        alpha = image[..., -1:].astype(np.float32) / 255.0
        image = np.rint(image[..., :-1] * alpha).astype(np.uint8)
        changed["alpha_flattened"] = True
    target = channels or (1 if image.shape[-1] == 1 else 3)
    if target == 1 and image.shape[-1] == 3:
        image = np.rint(image.astype(np.float32) @ _GREY_WEIGHTS)[..., None]
        image = np.clip(image, 0, 255).astype(np.uint8)
        changed["channels"] = True
    elif target == 3 and image.shape[-1] == 1:
        image = np.repeat(image, 3, axis=-1)
        changed["channels"] = True
    if size and image.shape[:2] != (size, size):
        image = resize(image, size)
        changed["resized"] = True
    return image, changed


def _read_one(file: _File, channels: int, size: int) -> tuple[dict, Optional[np.ndarray]]:
    """Decodes and converts one file: (its record, the image), or (the
    record with the reason it cannot be used, None)."""
    record: dict[str, Any] = {"file": file.rel}
    try:
        with open(file.path, "rb") as f:
            payload = f.read()
    except OSError as e:
        return {**record, "reason": f"unreadable: {e.strerror}"}, None
    if not payload:
        return {**record, "reason": "empty file"}, None
    fmt = sniff_format(payload)
    if fmt is None:
        return {**record, "reason": "not an image (no PNG, JPEG, BMP or GIF signature)"}, None
    try:
        with Image.open(io.BytesIO(payload), formats=[fmt]) as opened:
            opened.load()  # the first frame of an animation
            turned = fmt == "JPEG" and opened.getexif().get(_EXIF_ORIENTATION, 1) != 1
            image, mode = _pixels(ImageOps.exif_transpose(opened) if turned else opened)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        why = str(e).split(" <")[0] or type(e).__name__  # no object reprs
        return {**record, "reason": f"truncated or corrupt {fmt} ({why})"}, None
    if 0 in image.shape:
        return {**record, "reason": f"{fmt} decodes to an empty image"}, None
    digest = hashlib.blake2b(repr(image.shape).encode() + image.tobytes(),
                             digest_size=16).hexdigest()
    converted, changed = convert(image, channels, size)
    record.update(format=fmt, mode=mode, height=image.shape[0], width=image.shape[1],
                  native_channels=int(image.shape[-1]), digest=digest, **changed)
    if turned:
        record["exif_rotated"] = True
    if EXTENSIONS[os.path.splitext(file.path)[1].lower()] != fmt:
        record["extension_mismatch"] = True
    return record, converted


def _read_all(files: list[_File], channels: int, size: int) -> tuple[list[dict], list]:
    """Every file's record and converted image (None where unusable), read
    by a pool of threads (Pillow decodes and resizes without the GIL)."""
    workers = max(1, min(8, os.cpu_count() or 1))
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        outcomes = list(pool.map(lambda f: _read_one(f, channels, size), files,
                                 chunksize=64))
    return [record for record, _ in outcomes], [image for _, image in outcomes]


# ---------------------------------------------------------------------------
# The cache.

def _cache_path(folder: pathlib.Path, files: list[_File], channels: int,
                size: int) -> pathlib.Path:
    key = hashlib.sha256(json.dumps([CACHE_VERSION, str(folder), size, channels]).encode())
    for f in files:
        key.update(f"{f.rel}\0{f.size}\0{f.mtime_ns}\n".encode())
    folder_key = hashlib.sha256(str(folder).encode()).hexdigest()[:16]
    return cache_dir() / f"{folder_key}-s{size}c{channels}-{key.hexdigest()[:24]}.npz"


def _read_cache(path: pathlib.Path, count: int) -> Optional[tuple[list[dict], np.ndarray]]:
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as stored:
            records = json.loads(stored["records"].tobytes().decode())
            images = stored["images"]
        if len(records) != count or sum("reason" not in r for r in records) != len(images):
            raise ValueError("it does not match the folder")
        return records, images
    except (OSError, ValueError, KeyError) as e:  # damaged: decode again
        logging.warning("Ignoring the damaged image cache %s: %s", path, e)
        return None


def _write_cache(path: pathlib.Path, records: list[dict], images: np.ndarray) -> bool:
    """Writes the cache atomically (a temporary file, then a rename) and
    drops this folder's older caches at the same size and channels."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".npz")
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, images=images, records=np.frombuffer(
                    json.dumps(records).encode(), np.uint8))
            os.replace(temporary, path)
        except BaseException:
            pathlib.Path(temporary).unlink(missing_ok=True)
            raise
        prefix = path.name.rsplit("-", 1)[0] + "-"
        for old in path.parent.glob(prefix + "*.npz"):
            if old != path:
                old.unlink(missing_ok=True)
        return True
    except OSError as e:
        logging.warning("Could not cache the decoded images in %s (%s); the next run "
                        "decodes them again", path.parent, e.strerror or e)
        return False


def _decoded(scanned: _Scan, channels: int, size: int) -> tuple[list[dict], np.ndarray, dict]:
    """Every file's record and the converted images of the usable ones
    (uint8 [N, H, W, C], in file order), from the cache or decoded."""
    start = time.perf_counter()
    path = _cache_path(scanned.folder, scanned.files, channels, size)
    cached = _read_cache(path, len(scanned.files))
    if cached is not None:
        records, images = cached
        return records, images, {"hit": True, "path": str(path), "decoded_files": 0,
                                 "seconds": round(time.perf_counter() - start, 3)}
    records, converted = _read_all(scanned.files, channels, size)
    usable = [image for image in converted if image is not None]
    if usable and channels == 0 and len({image.shape[-1] for image in usable}) > 1:
        # Grey and colour images mixed: RGB for all.
        for i, (record, image) in enumerate(zip(records, converted)):
            if image is not None and image.shape[-1] == 1:
                converted[i] = np.repeat(image, 3, axis=-1)
                record["channels"] = True
        usable = [image for image in converted if image is not None]
    shapes = {}
    for record, image in zip(records, converted):
        if image is not None:
            shapes.setdefault(image.shape[:2], record["file"])
    if len(shapes) > 1:
        seen = ", ".join(f"{h}x{w} ({rel})" for (h, w), rel in list(shapes.items())[:3])
        raise UserError(f"the images in {scanned.folder} differ in size ({len(shapes)} sizes: "
                        f"{seen}, ...); give them one size with --hparams=image_size=N")
    images = (np.stack(usable) if usable
              else np.zeros((0, size or 1, size or 1, channels or 1), np.uint8))
    written = _write_cache(path, records, images)
    return records, images, {"hit": False, "path": str(path) if written else None,
                             "decoded_files": len(scanned.files),
                             "seconds": round(time.perf_counter() - start, 3)}


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
# The report.

def _counter(values) -> dict[str, int]:
    counts: dict[str, int] = {}
    for value in values:
        counts[value] = counts.get(value, 0) + 1
    return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))


def _report(scanned: _Scan, records: list[dict], duplicates: dict,
            assigned: dict, target: tuple[int, int, int], fractions: dict,
            cache: dict) -> dict[str, Any]:
    decoded = [r for r in records if "reason" not in r]
    skipped = scanned.skipped + [{"file": r["file"], "reason": r["reason"]}
                                 for r in records if "reason" in r]
    counts = {split: {name: len(assigned[split].get(name, [])) for name in scanned.classes}
              for split in SPLITS}
    train = counts["train"]
    largest = max(train, key=lambda name: train[name])
    smallest = min(train, key=lambda name: train[name])
    ratio = train[largest] / max(1, train[smallest])
    kinds = ("alpha_flattened", "channels", "resized", "exif_rotated")
    converted = {key: sum(bool(r.get(key)) for r in decoded) for key in kinds}
    converted["any"] = sum(any(r.get(key) for key in kinds) for r in decoded)
    report = {
        "folder": str(scanned.folder),
        "layout": scanned.layout,
        "classes": scanned.classes,
        "files_found": len(scanned.files) + len(scanned.skipped),
        "images_decoded": len(decoded),
        "skipped": sorted(skipped, key=lambda s: s["file"]),
        "extension_mismatch": [{"file": r["file"], "format": r["format"]}
                               for r in decoded if r.get("extension_mismatch")],
        "duplicates": duplicates,
        "counts": counts,
        "totals": {split: sum(counts[split].values()) for split in SPLITS},
        "imbalance": {"largest": [largest, train[largest]],
                      "smallest": [smallest, train[smallest]],
                      "ratio": round(ratio, 3), "strong": ratio >= IMBALANCE_RATIO,
                      "threshold": IMBALANCE_RATIO},
        "images": {
            "sizes": _counter(f"{r['height']}x{r['width']}" for r in decoded),
            "modes": _counter(r["mode"] for r in decoded),
            "formats": _counter(r["format"] for r in decoded),
            "converted": converted,
        },
        "target": {"height": target[0], "width": target[1], "channels": target[2]},
        "carving": fractions,
        "cache": cache,
    }
    report["summary"] = summary(report)
    return report


def summary(report: dict) -> dict[str, Any]:
    """The report's counts, flat (what config.json records)."""
    duplicates = report["duplicates"]
    return {
        "layout": report["layout"],
        "classes": len(report["classes"]),
        "files_found": report["files_found"],
        "skipped": len(report["skipped"]),
        "duplicates_within_class_dropped": sum(len(d["dropped"])
                                               for d in duplicates["within_class"]),
        "duplicates_across_classes_dropped": sum(len(d["files"])
                                                 for d in duplicates["across_classes"]),
        "duplicates_across_splits_removed": len(duplicates["across_splits"]),
        "converted": report["images"]["converted"]["any"],
        **report["totals"],
    }


def _listed(items: list[str]) -> str:
    more = f", ... ({len(items) - MAX_LISTED} more)" if len(items) > MAX_LISTED else ""
    return ", ".join(items[:MAX_LISTED]) + more


def log_summary(report: dict) -> None:
    """Logs the report in a few lines; problems as warnings."""
    totals, images = report["totals"], report["images"]
    cache = report["cache"]
    logging.info("Image folder %s (%s): %d classes, %d files; train %d, validation %d, "
                 "test %d", report["folder"], report["layout"], len(report["classes"]),
                 report["files_found"], totals["train"], totals["validation"], totals["test"])
    if report["skipped"]:
        logging.warning("Skipped %d file(s): %s", len(report["skipped"]),
                        _listed([f"{s['file']} ({s['reason']})" for s in report["skipped"]]))
    if report["extension_mismatch"]:
        logging.info("Read by content, not extension: %s", _listed(
            [f"{m['file']} is {m['format']}" for m in report["extension_mismatch"]]))
    duplicates = report["duplicates"]
    if duplicates["within_class"]:
        logging.warning("Duplicates within a class, kept once: %s", _listed(
            [f"{d['kept']} (dropped {', '.join(d['dropped'])})"
             for d in duplicates["within_class"]]))
    if duplicates["across_classes"]:
        logging.warning("Duplicates across classes (conflicting labels), every copy "
                        "dropped: %s", _listed([" = ".join(d["files"])
                                                for d in duplicates["across_classes"]]))
    if duplicates["across_splits"]:
        logging.warning("Removed from the evaluation splits, also in train: %s", _listed(
            [f"{d['removed']} (= {d['train_copy']})" for d in duplicates["across_splits"]]))
    imbalance = report["imbalance"]
    if imbalance["strong"]:
        logging.warning("Strong class imbalance: %s has %d training images, %s %d (%.1fx)",
                        *imbalance["largest"], *imbalance["smallest"], imbalance["ratio"])
    converted = images["converted"]
    logging.info("Sizes %s; modes %s; converted %d to %dx%dx%d (alpha flattened %d, "
                 "channels %d, resized %d)", _listed([f"{k} ({v})" for k, v in
                                                      images["sizes"].items()]),
                 ", ".join(f"{k} {v}" for k, v in images["modes"].items()),
                 converted["any"], report["target"]["height"], report["target"]["width"],
                 report["target"]["channels"], converted["alpha_flattened"],
                 converted["channels"], converted["resized"])
    if cache["hit"]:
        logging.info("Images read from the cache %s in %.2f s (no decoding)",
                     cache["path"], cache["seconds"])
    else:
        logging.info("Decoded %d files in %.2f s%s", cache["decoded_files"], cache["seconds"],
                     f"; cached in {cache['path']}" if cache["path"] else "")


# ---------------------------------------------------------------------------
# The entry point.

def load(data_dir: Optional[str], *, validation_fraction: float = 0.1,
         test_fraction: float = 0.1, image_size: int = 0,
         image_channels: int = 0) -> "data.Splits":
    """Reads, cleans, checks and splits the image folder `data_dir`.

    Returns data.Splits of (image uint8 [H, W, C]: image_size x
    image_size, or the images' own size with image_size 0; C 1 or 3; label
    int64 in sorted-class-name order), class_names, and `report` (what
    data_report.json holds; see the module docstring). Logs a summary.
    Raises UserError for a missing or empty folder, no class folders, one
    class, a class without an image in every split, images of different
    sizes with image_size 0, or bad fractions, size or channels.
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
    records, images, cache = _decoded(scanned, image_channels, image_size)
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
        log_summary(_report(scanned, records, duplicates, failed, target, fractions, cache))
        raise
    report = _report(scanned, records, duplicates, assigned, target, fractions, cache)
    log_summary(report)
    label_of = {name: i for i, name in enumerate(scanned.classes)}

    def split(name):
        rels = [(rel, label_of[label]) for label, files in assigned[name].items()
                for rel in files]
        x = images[[index[rel] for rel, _ in rels]] if rels else images[:0]
        y = np.array([label for _, label in rels], np.int64)
        return tf.data.Dataset.from_tensor_slices((x, y)), len(rels)

    (train, n_train), (validation, n_val), (test, n_test) = map(split, SPLITS)
    return data.Splits(
        train=train, validation=validation, test=test,
        num_train=n_train, num_validation=n_val, num_test=n_test,
        image_shape=tuple(int(d) for d in target), num_classes=len(scanned.classes),
        source=str(folder), class_names=tuple(scanned.classes), report=report)
