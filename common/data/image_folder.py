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
may sit in sub-folders of a class folder, also behind symbolic links
(a link back to a folder already read is skipped as a loop). PNG, JPEG, BMP
and GIF files (by extension: .png .jpg .jpeg .bmp .gif; the format itself is
read from the file's first bytes) are decoded with Pillow by a pool of
threads; a GIF's first frame; a JPEG turned upright by its EXIF orientation.
Hidden files and folders (a leading dot) are ignored; only regular files are
read (a FIFO, a device or a link to one is skipped, saying what it is), of
at most images.MAX_FILE_BYTES. A file or folder name that is not valid UTF-8
is used as it is on disk and written in reports and class names with its
undecodable bytes as \\xNN escapes.

Carving is by file, not by count: a file's split is set by a salted hash of
its path (`SPLIT_SEED`) against the fractions, so a file keeps its split
when others are added or removed. In a class so small that the hash leaves a
split without a file, the file nearest to that split's share moves to it.

Every image is converted to `image_channels` (1 grey, 3 RGB; 0: grey when
every image is grey, else RGB): an alpha channel is composited over black
(premultiplied; palette images are expanded first, 16-bit grey scaled to 8
bits, CMYK to RGB), RGB becomes grey by ITU-R 601 luma
(tf.image.rgb_to_grayscale's weights), grey becomes RGB by copying. Then it
is resized to `image_size` x `image_size` (Pillow's bilinear filter, which is
antialiased when shrinking; the aspect ratio is not kept), or, with
image_size 0, kept at its own size, which every image must then share.

The images are prepared once (common/data/prepared.py): decoded, converted
and written as TFRecord shards, each split on its own, in an order shuffled
by the same hash; later runs, sweep trials, --mode=eval and resumed runs
stream them. The copy is keyed by the folder, every image file's path, size
and modification time, the target size and channels and the carving: any
change to the folder's images prepares it again. Nothing of the images is
held in memory beyond one shard being written.

The same pass builds the cleaning report (common/data/image_report.py;
common/training/run.py writes it as data_report.json into the run folder; a
summary is logged):
  - files that cannot be used: empty, not an image, truncated or corrupt,
    not a regular file, too large, unsupported extension, outside a class
    folder: skipped, each with why;
  - exact duplicates by decoded pixels: within a class and split, kept once;
    across classes (conflicting labels): every copy dropped; across splits
    (an evaluation image that is also a training image): removed from the
    evaluation split, since it would inflate its accuracy;
  - counts per class and split; the largest against the smallest training
    class (at IMBALANCE_RATIO or more, a warning);
  - sizes, channel modes and formats seen; how many images were converted.
A class without an image in every split is a UserError naming it; so are an
empty folder, one without class folders, and a single class.
"""

import concurrent.futures
import dataclasses
import hashlib
import os
import pathlib
import shutil
import stat
import time
from typing import Any, Optional

from absl import logging
import numpy as np

from common.data import image_report, images, prepared
from common.data.image_report import SPLITS
from common.data.splits import Splits, check_class_names
from common.errors import UserError

DATASET = "image_folder"
EXTENSIONS = images.EXTENSIONS
display = images.display
SPLIT_SEED = 0             # salt of the hash that sets each file's split
CACHE_ENV = prepared.CACHE_ENV
# Flags of a file's record (what converting it did).
_ALPHA, _CHANNELS, _RESIZED, _EXIF, _MISMATCH = 1, 2, 4, 8, 16


@dataclasses.dataclass(frozen=True)
class _File:
    """One image file found under the folder."""
    path: str                 # to open (undecodable bytes as surrogate escapes)
    rel: str                  # relative to the folder, forward slashes, display()ed
    key: bytes                # the relative path's bytes on disk (the hash's input)
    split: Optional[str]      # its split folder (train/validation/test layout), else None
    label: str                # its class folder's name, display()ed
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


def _listdir(folder: pathlib.Path) -> list[pathlib.Path]:
    try:
        return _visible(folder.iterdir())
    except OSError as e:
        raise UserError(f"cannot read {display(str(folder))}: {e.strerror}") from None


def _walk(class_dir: pathlib.Path, prefix: int, split: Optional[str], label: str,
          files: list, skipped: list) -> None:
    """Adds the image files under `class_dir` (links to folders followed,
    loops skipped) to `files`, and what cannot be used to `skipped`."""
    def rel_of(path: str) -> str:
        return display(path[prefix:].replace(os.sep, "/"))

    def unreadable(error: OSError) -> None:
        skipped.append({"file": rel_of(error.filename or str(class_dir)) + "/",
                        "reason": f"unreadable folder: {error.strerror}"})

    try:
        first = os.stat(class_dir)
    except OSError as e:
        unreadable(e)
        return
    seen = {(first.st_dev, first.st_ino)}
    for root, dirs, names in os.walk(class_dir, onerror=unreadable, followlinks=True):
        keep = []
        for name in sorted(d for d in dirs if not d.startswith(".")):
            full = os.path.join(root, name)
            try:
                info = os.stat(full)
            except OSError as e:
                skipped.append({"file": rel_of(full) + "/", "reason": f"unreadable: {e.strerror}"})
                continue
            if (info.st_dev, info.st_ino) in seen:
                skipped.append({"file": rel_of(full) + "/",
                                "reason": "a link to a folder already read (a loop)"})
                continue
            seen.add((info.st_dev, info.st_ino))
            keep.append(name)
        dirs[:] = keep
        for name in sorted(names):
            if name.startswith("."):
                continue
            path = os.path.join(root, name)  # strings: pathlib is slow for 100k files
            rel = rel_of(path)
            extension = os.path.splitext(name)[1].lower()
            if extension not in EXTENSIONS:
                skipped.append({"file": rel, "reason": f"unsupported extension "
                                f"{display(extension) or '(none)'!r} (reads "
                                f"{', '.join(sorted(EXTENSIONS))})"})
                continue
            try:
                info = os.stat(path)
            except OSError as e:
                skipped.append({"file": rel, "reason": f"unreadable: {e.strerror}"})
                continue
            if not stat.S_ISREG(info.st_mode):
                skipped.append({"file": rel, "reason": f"{images.file_kind(info.st_mode)}, "
                                "not a regular file"})
                continue
            if info.st_size > images.MAX_FILE_BYTES:
                skipped.append({"file": rel, "reason": f"{info.st_size:,} bytes, more than the "
                                f"{images.MAX_FILE_BYTES:,} read for one image"})
                continue
            files.append(_File(path, rel, os.fsencode(path[prefix:]), split, label,
                               info.st_size, info.st_mtime_ns))


def scan(folder: pathlib.Path) -> _Scan:
    """Finds the layout, the classes and every file under `folder`; raises
    UserError for an empty folder, no class folders, one class, or a mix of
    split and class folders.

    Nothing is decoded here: a file is kept by its extension (EXTENSIONS)
    and stat()ed (links followed); files with another extension, files that
    are not regular files (FIFOs, devices, links to them) or too large, files
    that cannot be stat()ed, folders that cannot be read or that a link
    loops back to, and files outside a class folder are listed as skipped,
    with the reason. Hidden files and folders are ignored.

    Args:
        folder: the image folder (--data_dir), resolved.

    Returns:
        A _Scan: `folder`; `layout` ("class_folders" or "split_folders");
        `classes` (the class folders' names, display()ed, sorted, over every
        split); `split_folders` (the split folders present, by name);
        `files` (one _File per image file: split by split in SPLITS order,
        class folder by class folder by name, then os.walk's top-down order
        with names sorted); `skipped` ([{"file", "reason"}]).

    Raises:
        UserError: the folder cannot be read or is empty; split folders
            (train, validation, test) sit beside other folders; the split
            layout lacks train/ or test/; there is no class folder, or only
            one class; a class name is not one printable line.
    """
    top = _listdir(folder)
    if not top:
        raise UserError(f"--data_dir {folder} is empty; {_describe_layouts(folder)}")
    subfolders = [p for p in top if p.is_dir()]
    loose = [p for p in top if not p.is_dir()]
    skipped = [{"file": display(p.name), "reason": "not inside a class folder"} for p in loose]
    split_names = [p.name for p in subfolders if p.name in SPLITS]
    if split_names:
        others = [display(p.name) for p in subfolders if p.name not in SPLITS]
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
            entries = _listdir(folder / split)
            skipped += [{"file": f"{split}/{display(p.name)}",
                         "reason": "not inside a class folder"}
                        for p in entries if not p.is_dir()]
            class_dirs += [(split, p) for p in entries if p.is_dir()]
        layout = "split_folders"
    else:
        class_dirs = [(None, p) for p in subfolders]
        layout = "class_folders"
    classes = sorted({display(p.name) for _, p in class_dirs})
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
    files: list[_File] = []
    prefix = len(os.path.join(str(folder), ""))
    for split, class_dir in class_dirs:
        _walk(class_dir, prefix, split, display(class_dir.name), files, skipped)
    return _Scan(folder, layout, classes, split_names, files, skipped)


# ---------------------------------------------------------------------------
# Carving: each file's split, from its path alone.

def unit_hash(key: bytes, seed: int = SPLIT_SEED) -> float:
    """A file's place in [0, 1): SHA-256 of the seed and its relative path's
    bytes, its first 8 bytes read as a fraction of 2**64.

    Args:
        key: the file's path relative to the folder, as bytes.
        seed: the salt.

    Returns:
        A float in [0, 1), uniform over paths.
    """
    digest = hashlib.sha256(f"{seed}/".encode() + key).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def _bounds(layout: str, carve: bool, test_fraction: float,
            validation_fraction: float) -> dict[str, tuple[float, float]]:
    """Each split's share of [0, 1) for the files the hash carves."""
    if layout == "class_folders":
        cut = test_fraction + (1 - test_fraction) * validation_fraction
        return {"test": (0.0, test_fraction), "validation": (test_fraction, cut),
                "train": (cut, 1.0)}
    if carve:
        return {"validation": (0.0, validation_fraction), "train": (validation_fraction, 1.0)}
    return {}


def _distance(u: float, bounds: tuple[float, float]) -> float:
    low, high = bounds
    return 0.0 if low <= u < high else min(abs(u - low), abs(u - high))


def assign(scanned: _Scan, test_fraction: float,
           validation_fraction: float) -> tuple[list[str], list[float]]:
    """Each file's split, and its hash (the order files are written in).

    Class folders: a file whose unit_hash() is below test_fraction is a
    test file, below test_fraction + (1 - test_fraction) *
    validation_fraction a validation file, else a training file. Split
    folders: test/ and validation/ files keep their folder; train/ files are
    carved into validation and train by validation_fraction where there is no
    validation/. A class whose carving leaves a split empty gets, for that
    split, the file of its largest split nearest to that split's share.

    Args:
        scanned: scan()'s result.
        test_fraction: class folders: the test share.
        validation_fraction: the validation share of the rest (class
            folders) or of train/ (split folders without validation/).

    Returns:
        (splits, hashes): one split name and one unit_hash() per
        scanned.files entry.

    Raises:
        UserError: naming every class with too few files to have one in
            every split (class folders: 3; split folders: one in each of
            train/ and test/, two in train/ where validation/ is carved
            from it), before anything is decoded.
    """
    carve = "validation" not in scanned.split_folders
    bounds = _bounds(scanned.layout, carve, test_fraction, validation_fraction)
    hashes = [unit_hash(f.key) for f in scanned.files]
    splits: list[str] = []
    for f, u in zip(scanned.files, hashes):
        if f.split in (None, "train") and bounds:
            splits.append(next(name for name, (low, high) in bounds.items() if low <= u < high))
        else:
            splits.append(f.split)
    by_class: dict[str, list[int]] = {}
    for i, f in enumerate(scanned.files):
        by_class.setdefault(f.label, []).append(i)
    short = []
    for name in scanned.classes:
        members = by_class.get(name, [])
        if scanned.layout == "class_folders":
            carved = members
            if len(members) < 3:
                short.append(f"{name!r} has {len(members)} image file(s), needs 3 (one for "
                             "each of train, validation, test)")
                continue
        else:
            counted = {s: [i for i in members if scanned.files[i].split == s] for s in SPLITS}
            needed = {"train": 2 if carve else 1, "validation": 0 if carve else 1, "test": 1}
            missing = [f"{s}/ has {len(counted[s])}" for s in SPLITS
                       if len(counted[s]) < needed[s]]
            if missing:
                short.append(f"{name!r}: {', '.join(missing)} image file(s)"
                             + (" (train needs 2: validation is carved from it)"
                                if carve and len(counted["train"]) < 2 else ""))
                continue
            carved = counted["train"] if carve else []
        for split in bounds:
            if not carved or any(splits[i] == split for i in carved):
                continue
            sizes = {s: sum(splits[i] == s for i in carved) for s in bounds}
            donor = max(sizes, key=lambda s: (sizes[s], s))
            nearest = min((i for i in carved if splits[i] == donor),
                          key=lambda i: (_distance(hashes[i], bounds[split]), i))
            splits[nearest] = split
    if short:
        raise UserError(f"too few images to put every class in every split in "
                        f"{scanned.folder}: {'; '.join(short)}; add images, or remove "
                        "these class folders")
    return splits, hashes


# ---------------------------------------------------------------------------
# The preparation pass.

def _target_shape(scanned: _Scan, channels: int, size: int) -> tuple[int, int, int]:
    """(H, W, C) every image converts to; reads the files' headers where
    `size` or `channels` is 0."""
    if size and channels:
        return size, size, channels
    sizes: dict[tuple[int, int], str] = {}
    grey = True
    for f in scanned.files:
        try:
            height, width, found = images.probe(images.read_file(f.path))
        except images.Unusable:
            continue  # the pass says why
        sizes.setdefault((height, width), f.rel)
        grey = grey and found == 1
    if not size and len(sizes) > 1:
        seen = ", ".join(f"{h}x{w} ({rel})" for (h, w), rel in list(sizes.items())[:3])
        raise UserError(f"the images in {scanned.folder} differ in size ({len(sizes)} sizes: "
                        f"{seen}, ...); give them one size with --hparams=image_size=N")
    if size:
        height = width = size
    else:
        height, width = next(iter(sizes), (1, 1))
    return height, width, channels or (1 if grey else 3)


def _read_one(f: _File, index: int, shape: tuple[int, int, int]
              ) -> tuple[list, Optional[np.ndarray]]:
    """Decodes and converts one file: (its record, the image), or (the record
    with the reason it cannot be used, None). A record is [index, digest,
    reason, format, mode, height, width, native channels, flags]."""
    try:
        image, facts = images.decode(images.read_file(f.path))
    except images.Unusable as e:
        return [index, None, str(e), None, None, 0, 0, 0, 0], None
    digest = hashlib.blake2b(repr(image.shape).encode() + image.tobytes(),
                             digest_size=16).hexdigest()
    converted, changed = images.convert(image, shape[2], shape[:2])
    flags = ((_ALPHA if changed["alpha_flattened"] else 0)
             | (_CHANNELS if changed["channels"] else 0)
             | (_RESIZED if changed["resized"] else 0)
             | (_EXIF if facts["exif_rotated"] else 0)
             | (_MISMATCH if EXTENSIONS[os.path.splitext(f.path)[1].lower()] != facts["format"]
                else 0))
    record = [index, digest, None, facts["format"], facts["mode"], int(image.shape[0]),
              int(image.shape[1]), int(image.shape[-1]), flags]
    if converted.shape != shape:
        record[1:3] = [None, f"decodes to {converted.shape[0]}x{converted.shape[1]}, not the "
                             f"{shape[0]}x{shape[1]} of the others"]
        return record, None
    return record, converted


def _clean(scanned: _Scan, records: list[list], splits: list[str]
           ) -> tuple[dict[str, list[int]], dict]:
    """Duplicates by decoded pixels: ({split: excluded file indices},
    the duplicates' report)."""
    groups: dict[str, list[int]] = {}
    for record in records:
        if record[1] is not None:
            groups.setdefault(record[1], []).append(record[0])
    excluded: dict[str, list[int]] = {split: [] for split in SPLITS}
    within, across_classes, across_splits = [], [], []
    files = scanned.files
    for indices in groups.values():
        if len(indices) < 2:
            continue
        indices = sorted(indices, key=lambda i: files[i].rel)
        labels = sorted({files[i].label for i in indices})
        if len(labels) > 1:
            across_classes.append({"classes": labels, "files": [files[i].rel for i in indices]})
            for i in indices:
                excluded[splits[i]].append(i)
            continue
        per_split: dict[str, list[int]] = {}
        for i in indices:
            per_split.setdefault(splits[i], []).append(i)
        for split, copies in per_split.items():
            if len(copies) > 1:
                within.append({"class": labels[0], "split": split, "kept": files[copies[0]].rel,
                               "dropped": [files[i].rel for i in copies[1:]]})
                excluded[split] += copies[1:]
        if "train" in per_split:
            for split in ("validation", "test"):
                if split in per_split:
                    first = per_split[split][0]
                    across_splits.append({"class": labels[0], "split": split,
                                          "removed": files[first].rel,
                                          "train_copy": files[per_split["train"][0]].rel})
                    excluded[split].append(first)
        elif "validation" in per_split and "test" in per_split:
            first = per_split["test"][0]
            across_splits.append({"class": labels[0], "split": "test",
                                  "removed": files[first].rel,
                                  "train_copy": None,
                                  "validation_copy": files[per_split["validation"][0]].rel})
            excluded["test"].append(first)
    return excluded, {"within_class": within, "across_classes": across_classes,
                      "across_splits": across_splits}


def _counter(values) -> dict[str, int]:
    counts: dict[str, int] = {}
    for value in values:
        counts[value] = counts.get(value, 0) + 1
    return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))


def _facts(scanned: _Scan, records: list[list], splits: list[str],
           excluded: dict[str, list[int]], duplicates: dict) -> dict[str, Any]:
    """What the manifest keeps of the pass for the report."""
    usable = [r for r in records if r[1] is not None]
    dropped = {i for indices in excluded.values() for i in indices}
    counts = {split: {name: 0 for name in scanned.classes} for split in SPLITS}
    for r in usable:
        if r[0] not in dropped:
            counts[splits[r[0]]][scanned.files[r[0]].label] += 1
    converted = {key: sum(1 for r in usable if r[8] & flag) for key, flag in (
        ("alpha_flattened", _ALPHA), ("channels", _CHANNELS), ("resized", _RESIZED),
        ("exif_rotated", _EXIF))}
    converted["any"] = sum(1 for r in usable if r[8] & (_ALPHA | _CHANNELS | _RESIZED | _EXIF))
    return {
        "unusable": [{"file": scanned.files[r[0]].rel, "reason": r[2]}
                     for r in records if r[1] is None],
        "extension_mismatch": [{"file": scanned.files[r[0]].rel, "format": r[3]}
                               for r in usable if r[8] & _MISMATCH],
        "images_decoded": len(usable),
        "duplicates": duplicates,
        "counts": counts,
        "images": {"sizes": _counter(f"{r[5]}x{r[6]}" for r in usable),
                   "modes": _counter(r[4] for r in usable),
                   "formats": _counter(r[3] for r in usable),
                   "converted": converted},
    }


def _prepare(scanned: _Scan, splits: list[str], hashes: list[float], size: int,
             channels: int, carving: dict) -> prepared.Copy:
    """Decodes every file once into the prepared copy (or reads the copy
    an earlier run made). The copy is keyed by the size and channels asked
    for (0: the images' own), so the files' headers are read for the shape
    only when a copy is prepared."""
    files = scanned.files
    label_of = {name: i for i, name in enumerate(scanned.classes)}
    key = prepared.key_of({
        "folder": str(scanned.folder), "size": size, "channels": channels,
        "carving": carving,
        "files": hashlib.sha256(b"".join(map(_fingerprint, files))).hexdigest()})
    folder_key = hashlib.sha256(os.fsencode(str(scanned.folder))).hexdigest()[:12]
    family = f"{DATASET}-{folder_key}-s{size}c{channels}"
    order = {split: sorted((i for i in range(len(files)) if splits[i] == split),
                           key=lambda i: (hashes[i], i)) for split in SPLITS}

    def write(writer: prepared.Writer):
        shape = writer.image_shape
        pixels = int(np.prod(shape))
        counts = {split: prepared.shard_count(len(order[split]), pixels) for split in SPLITS}
        plan = [(split, k, order[split][k * len(order[split]) // counts[split]:
                                        (k + 1) * len(order[split]) // counts[split]])
                for split in SPLITS for k in range(counts[split])]
        done = {(split, k): writer.done(split, k, counts[split]) for split, k, _ in plan}
        prepared.say_resumed(writer, len(plan), f"{family}-{key}")
        progress = prepared.Progress(len(files), display(str(scanned.folder)))
        records: list[list] = []
        started = time.perf_counter()
        decoded = 0
        with concurrent.futures.ThreadPoolExecutor(max(1, min(8, os.cpu_count() or 1))) as pool:
            for split, k, chunk in plan:
                if done[(split, k)] is not None and _valid_records(done[(split, k)], chunk):
                    records += done[(split, k)]["records"]
                    progress.add(len(chunk))
                    continue
                shard_records = []

                def examples(chunk=chunk, shard_records=shard_records):
                    outcomes = pool.map(lambda i: _read_one(files[i], i, shape), chunk)
                    for i, (record, image) in zip(chunk, outcomes):
                        shard_records.append(record)
                        progress.add(1)
                        if image is not None:
                            yield i, label_of[files[i].label], image

                writer.shard(split, k, counts[split], examples(), records=shard_records)
                records += shard_records
                decoded += len(chunk)
        seconds = time.perf_counter() - started
        cores = os.cpu_count() or 1
        if decoded:
            logging.info("Decoded %d images in %.1f s: %.0f images/s (%.0f per core, %d cores)",
                         decoded, seconds, decoded / seconds, decoded / seconds / cores, cores)
        records.sort(key=lambda r: r[0])
        excluded, duplicates = _clean(scanned, records, splits)
        facts = _facts(scanned, records, splits, excluded, duplicates)
        facts["decoded_files"] = decoded
        facts["decode_seconds"] = round(seconds, 3)
        return counts, excluded, facts

    return prepared.prepare(family, key, lambda: _target_shape(scanned, channels, size), write,
                            what=f"the image folder {display(str(scanned.folder))}",
                            expected=(size, size, channels))


def _valid_records(progress: dict, chunk: list[int]) -> bool:
    """Whether an interrupted pass's progress of a shard is what this pass
    writes for the files of `chunk`: one record per file, in order, each of
    _read_one's form (a usable one with its digest, format and mode, an
    unusable one with its reason), and the shard's records exactly the
    usable files."""
    records = progress.get("records")

    def valid(r, i):
        if not (isinstance(r, list) and len(r) == 9 and r[0] == i
                and all(prepared.is_count(v) for v in r[5:])):
            return False
        if r[1] is None:
            return isinstance(r[2], str)
        return isinstance(r[1], str) and r[2] is None and isinstance(r[3], str) \
            and isinstance(r[4], str)

    if not (isinstance(records, list) and len(records) == len(chunk)
            and all(valid(r, i) for r, i in zip(records, chunk))):
        return False
    usable = [r[0] for r in records if r[1] is not None]
    written = [i for start, stop in progress.get("indices", []) for i in range(start, stop)]
    return usable == written and progress.get("examples") == len(usable)


def _check_facts(facts: dict, scanned: _Scan, copy: prepared.Copy) -> None:
    """Raises ValueError unless the manifest's facts are what the pass writes
    and agree with the copy's counts."""
    is_count = prepared.is_count

    def named_list(value, keys):
        return isinstance(value, list) and all(
            isinstance(v, dict) and set(v) == set(keys)
            and all(isinstance(v[k], str) for k in keys) for v in value)

    counts = facts.get("counts")
    if not (isinstance(counts, dict) and sorted(counts) == sorted(SPLITS) and all(
            isinstance(counts[s], dict) and sorted(counts[s]) == sorted(scanned.classes)
            and all(is_count(n) for n in counts[s].values()) for s in SPLITS)):
        raise ValueError("its counts are not per split and class")
    for split in SPLITS:
        if sum(counts[split].values()) != copy.splits[split].num_examples:
            raise ValueError(f"its {split} counts disagree with its shards")
    if not named_list(facts.get("unusable"), ("file", "reason")):
        raise ValueError("its unusable files are not a list of files and reasons")
    if not named_list(facts.get("extension_mismatch"), ("file", "format")):
        raise ValueError("its extension mismatches are not a list of files and formats")
    duplicates = facts.get("duplicates")
    if not (isinstance(duplicates, dict) and all(isinstance(duplicates.get(k), list) for k in (
            "within_class", "across_classes", "across_splits"))):
        raise ValueError("its duplicates are not three lists")
    shapes = {"within_class": {"class": str, "split": str, "kept": str, "dropped": list},
              "across_classes": {"classes": list, "files": list},
              "across_splits": {"class": str, "split": str, "removed": str,
                                "train_copy": (str, type(None))}}
    for kind, keys in shapes.items():
        for entry in duplicates[kind]:
            extra_keys = set(entry) - set(keys) if isinstance(entry, dict) else set()
            if not isinstance(entry, dict) or not set(keys) <= set(entry) \
                    or extra_keys - {"validation_copy"} or not all(
                        isinstance(entry[k], t) for k, t in keys.items()) or not all(
                        all(isinstance(x, str) for x in entry[k]) for k, t in keys.items()
                        if t is list) or not isinstance(entry.get("validation_copy", ""), str):
                raise ValueError(f"a {kind} duplicate is not names of files")
    seen = facts.get("images")
    if not (isinstance(seen, dict) and all(
            isinstance(seen.get(k), dict) and all(isinstance(n, str) and is_count(v)
                                                  for n, v in seen[k].items())
            for k in ("sizes", "modes", "formats", "converted"))
            and set(seen["converted"]) == {"alpha_flattened", "channels", "resized",
                                           "exif_rotated", "any"}):
        raise ValueError("its image facts are not counts")
    for key in ("images_decoded", "decoded_files"):
        if not is_count(facts.get(key)):
            raise ValueError(f"its {key} is not a count")
    if not isinstance(facts.get("decode_seconds"), (int, float)):
        raise ValueError("its decode_seconds is not a number")


def _fingerprint(f: _File) -> bytes:
    """What a file contributes to a copy's key and to file_set(): its path's
    bytes, size and modification time."""
    return f.key + b"\0" + f"{f.size}\0{f.mtime_ns}\n".encode()


def file_set(scanned: _Scan) -> dict[str, Any]:
    """The fingerprint of a folder's image files that a resumed run must
    find again: how many, and a hash of their paths, sizes and modification
    times, overall and per class.

    Args:
        scanned: scan()'s result.

    Returns:
        {"files": N, "sha256": 16 hex digits, "classes": {class: [files,
        12 hex digits]}}.
    """
    overall = hashlib.sha256()
    per_class: dict[str, Any] = {}
    for f in scanned.files:
        line = _fingerprint(f)
        overall.update(line)
        per_class.setdefault(f.label, [0, hashlib.sha256()])
        per_class[f.label][0] += 1
        per_class[f.label][1].update(line)
    return {"files": len(scanned.files), "sha256": overall.hexdigest()[:16],
            "classes": {name: [count, digest.hexdigest()[:12]]
                        for name, (count, digest) in sorted(per_class.items())}}


def describe_change(before: Any, now: dict) -> str:
    """What changed between two file_set() fingerprints, in words.

    Args:
        before: the fingerprint a run recorded (input: checked here).
        now: the folder's fingerprint today.

    Returns:
        E.g. "1 image file added to 'Bag', 2 removed from 'Coat', files
        changed in 'Shirt' (302 image files, was 301)"; "" where nothing
        changed.
    """
    if before == now:
        return ""
    if not isinstance(now, dict):
        return "the run read an image folder; this command reads other data"
    old = before.get("classes") if isinstance(before, dict) else None
    if not isinstance(old, dict):
        return "the run did not record its image files" if before is None else (
            "the image files changed")
    parts = []
    for name in sorted(set(old) | set(now["classes"])):
        was = old.get(name)
        count, digest = now["classes"].get(name, [0, ""])
        was_count = was[0] if isinstance(was, list) and len(was) == 2 \
            and prepared.is_count(was[0]) else 0
        if was is None:
            parts.append(f"class {name!r} added ({count} image files)")
        elif name not in now["classes"]:
            parts.append(f"class {name!r} removed")
        elif count > was_count:
            parts.append(f"{count - was_count} image file(s) added to {name!r}")
        elif count < was_count:
            parts.append(f"{was_count - count} removed from {name!r}")
        elif was != [count, digest]:
            parts.append(f"files changed in {name!r}")
    listed = ", ".join(parts[:5]) + (f", ... ({len(parts) - 5} more)" if len(parts) > 5 else "")
    total = before.get("files")
    return (f"{listed or 'the image files changed'} ({now['files']} image files, was "
            f"{total if isinstance(total, int) else 'unknown'})")


# ---------------------------------------------------------------------------
# The entry point.

def load(data_dir: Optional[str], *, validation_fraction: float = 0.1,
         test_fraction: float = 0.1, image_size: int = 0,
         image_channels: int = 0) -> Splits:
    """Reads, cleans, checks and splits the image folder `data_dir`.

    Scans the folder (scan()), sets each file's split (assign()), reads the
    prepared copy or prepares it (decoding every file once, dropping
    duplicates), and logs the report's summary (also when a class is too
    small, before the error).

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
        Splits of prepared.ShardedSplit readers of (image uint8 [H, W, C]:
        image_size x image_size, or the images' own size with image_size 0;
        C 1 or 3; label int64, the index of the class in sorted-class-name
        order), with `class_names`, `report` (what data_report.json holds;
        image_report.build()) and `file_set` (file_set()).

    Raises:
        UserError: no `data_dir`, or one that does not exist or is not a
            folder; a fraction outside (0, 1); image_channels not 0, 1 or 3;
            a negative image_size; an empty folder, no class folders, one
            class, or a bad split layout (scan()); images of different sizes
            with image_size 0; a class without enough usable images for an
            image in every split (the message names every such class); a
            cache folder that cannot be written.
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
    splits, hashes = assign(scanned, test_fraction, validation_fraction)
    carving = {"seed": SPLIT_SEED, "by": "hash of each file's path",
               "validation_fraction": validation_fraction,
               "test_fraction": test_fraction if scanned.layout == "class_folders" else None,
               "validation_from": ("validation/" if "validation" in scanned.split_folders
                                   else "train")}
    copy = _prepare(scanned, splits, hashes, image_size, image_channels, carving)
    try:
        _check_facts(copy.extra, scanned, copy)
    except ValueError as e:
        logging.warning("Ignoring the prepared copy %s (%s); preparing it again",
                        copy.folder, e)
        shutil.rmtree(copy.folder, ignore_errors=True)
        copy = _prepare(scanned, splits, hashes, image_size, image_channels, carving)
        _check_facts(copy.extra, scanned, copy)
    facts, shape = copy.extra, copy.image_shape
    cache = {"hit": not copy.prepared, "path": str(copy.folder),
             "decoded_files": facts["decoded_files"] if copy.prepared else 0,
             "seconds": round(copy.seconds, 3)}
    report = image_report.build(scanned, facts, shape, carving, cache)
    image_report.log_summary(report)
    short = [name for name in scanned.classes
             if any(facts["counts"][split][name] < 1 for split in SPLITS)]
    if short:
        raise UserError(
            f"too few images to put every class in every split in {scanned.folder}: "
            + "; ".join(f"{name!r} has " + ", ".join(f"{facts['counts'][s][name]} {s}"
                                                     for s in SPLITS) + " usable image(s)"
                        for name in short)
            + "; add images, or remove these class folders")
    readers = prepared.splits_of(copy)
    return Splits(
        train=readers["train"], validation=readers["validation"], test=readers["test"],
        num_train=readers["train"].num_examples,
        num_validation=readers["validation"].num_examples,
        num_test=readers["test"].num_examples,
        image_shape=shape, num_classes=len(scanned.classes),
        source=str(folder), class_names=tuple(scanned.classes), report=report,
        file_set=file_set(scanned))
