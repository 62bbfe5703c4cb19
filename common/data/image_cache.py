"""Decoding an image folder's files (in parallel) and caching the result.

Decoded, converted images are cached on disk (CACHE_ENV, else
$XDG_CACHE_HOME or ~/.cache, under keras-experiments/image_folder/), keyed by
the folder, every image file's path, size and modification time, and the
target size and channels: a second run or a sweep's next trial reads one
.npz instead of decoding; any change to the folder's images invalidates it.
"""

import concurrent.futures
import hashlib
import json
import os
import pathlib
import tempfile
import time
from typing import Any, Optional

from absl import logging
import numpy as np

from common.data import images as image_io
from common.errors import UserError

CACHE_ENV = "IMAGE_FOLDER_CACHE"


CACHE_VERSION = 1


def cache_dir() -> pathlib.Path:
    """Where decoded folders are cached: $IMAGE_FOLDER_CACHE, else
    $XDG_CACHE_HOME/keras-experiments/image_folder, else under ~/.cache.

    Returns:
        The folder's path, "~" expanded; it is not created here.
    """
    if os.environ.get(CACHE_ENV):
        return pathlib.Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return pathlib.Path(base).expanduser() / "keras-experiments" / "image_folder"


def _read_one(file, channels: int, size: int) -> tuple[dict, Optional[np.ndarray]]:
    """Decodes and converts one file: (its record, the image), or (the
    record with the reason it cannot be used, None)."""
    record: dict[str, Any] = {"file": file.rel}
    try:
        with open(file.path, "rb") as f:
            image, facts = image_io.decode(f.read())
    except OSError as e:
        return {**record, "reason": f"unreadable: {e.strerror}"}, None
    except image_io.Unusable as e:
        return {**record, "reason": str(e)}, None
    digest = hashlib.blake2b(repr(image.shape).encode() + image.tobytes(),
                             digest_size=16).hexdigest()
    converted, changed = image_io.convert(image, channels, size)
    record.update(format=facts["format"], mode=facts["mode"], height=image.shape[0],
                  width=image.shape[1], native_channels=int(image.shape[-1]), digest=digest,
                  **changed)
    if facts["exif_rotated"]:
        record["exif_rotated"] = True
    if image_io.EXTENSIONS[os.path.splitext(file.path)[1].lower()] != facts["format"]:
        record["extension_mismatch"] = True
    return record, converted


def _read_all(files: list, channels: int, size: int) -> tuple[list[dict], list]:
    """Every file's record and converted image (None where unusable), read
    by a pool of threads (Pillow decodes and resizes without the GIL)."""
    workers = max(1, min(8, os.cpu_count() or 1))
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        outcomes = list(pool.map(lambda f: _read_one(f, channels, size), files,
                                 chunksize=64))
    return [record for record, _ in outcomes], [image for _, image in outcomes]


def _cache_path(folder: pathlib.Path, files: list, channels: int,
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
    except (OSError, ValueError, KeyError, TypeError, RecursionError) as e:  # damaged: decode again
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


def decoded(scanned, channels: int, size: int) -> tuple[list[dict], np.ndarray, dict]:
    """Every file's record and the converted images of the usable ones
    (uint8 [N, H, W, C], in file order), from the cache or decoded.

    On a cache miss every file is decoded and converted (images.decode(),
    images.convert()) by a pool of up to 8 threads; with `channels` 0 and
    grey and colour images mixed, the grey ones are then copied to RGB. The
    result is cached (see the module docstring) unless the images differ in
    size; a cache that cannot be written is a warning, not an error.

    Args:
        scanned: image_folder.scan()'s result; its `folder` and `files` (each
            with `path`, `rel`, `size`, `mtime_ns`) are read.
        channels: 1 grey, 3 RGB; 0: grey if every usable image is grey
            (or grey+alpha), else RGB.
        size: images resized to size x size pixels; 0: their own size.

    Returns:
        (records, images, cache):
        records: one dict per file of `scanned.files`, in order: "file" (its
            rel path) and either "reason" (why it cannot be used) or
            "format", "mode", "height", "width", "native_channels" (as
            stored), "digest" (BLAKE2b of the decoded pixels, before
            conversion), the booleans "alpha_flattened", "channels" and
            "resized", and, where true, "exif_rotated" and
            "extension_mismatch".
        images: uint8 [N, H, W, C], N the records without "reason", in the
            same order; with none, uint8 [0, size or 1, size or 1,
            channels or 1].
        cache: {"hit": read from the cache, "path": the cache file (None
            where it could not be written), "decoded_files": files decoded
            (0 on a hit), "seconds": time taken}.

    Raises:
        UserError: the usable images differ in height or width (possible
            only with `size` 0); the message names up to three sizes and
            suggests --hparams=image_size=N.
    """
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
