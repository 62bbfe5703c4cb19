"""Image files as arrays: PNG, JPEG, BMP and GIF decoded with Pillow and
converted the one way this project converts images, for training
(common/data/image_folder.py) and for prediction (common/deploy/predict.py) alike.

Decoding: the format is read from the file's first bytes (not its name); a
GIF's first frame; a JPEG turned upright by its EXIF orientation; palettes
expanded, 16-bit grey scaled to 8 bits, CMYK and other colour spaces to RGB.
Converting: an alpha channel composited over black (premultiplied), RGB to
grey by ITU-R 601 luma (tf.image.rgb_to_grayscale's weights), grey to RGB
by copying, then a resize by Pillow's bilinear filter (antialiased when
shrinking; the aspect ratio is not kept).
"""

import io
import os
import stat
from typing import Optional, Union

import numpy as np
from PIL import Image, ImageOps

FORMATS = ("PNG", "JPEG", "BMP", "GIF")
EXTENSIONS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".bmp": "BMP", ".gif": "GIF"}
_EXIF_ORIENTATION = 0x0112
_GREY_WEIGHTS = np.array([0.2989, 0.5870, 0.1140], np.float32)  # tf.image.rgb_to_grayscale's


# The largest image file read (a 50-megapixel 16-bit PNG is about 300 MB
# decoded, but well under this on disk).
MAX_FILE_BYTES = 256 * 2**20


class Unusable(Exception):
    """A file that cannot be used as an image; the message says why."""


def display(name: str) -> str:
    """A file or folder name as reports, logs, CSV files and class names
    write it: the bytes that are not valid UTF-8 (kept by Python as
    surrogate escapes, e.g. Latin-1's \\xe9) as \\xNN.

    Args:
        name: a name or path as os.listdir or pathlib gives it.

    Returns:
        The name with every undecodable byte written \\xNN; valid UTF-8
        unchanged.
    """
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def file_kind(mode: int) -> str:
    """What a file that is not a regular file is, in words.

    Args:
        mode: st_mode of its stat (links followed).

    Returns:
        "a FIFO", "a character device", "a block device", "a socket", "a
        folder" or "not a regular file".
    """
    for test, kind in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISDIR, "a folder")):
        if test(mode):
            return kind
    return "not a regular file"


def read_file(path: str, max_bytes: int = MAX_FILE_BYTES) -> bytes:
    """The bytes of the image file at `path`, read only where it is a
    regular file (a link is followed to what it names) of at most
    `max_bytes`: a FIFO, a device (a link to /dev/zero) or a socket is
    refused without reading, so it can neither hang nor fill memory.

    Args:
        path: the file (str; bytes that are not UTF-8 kept as Python's
            surrogate escapes).
        max_bytes: the largest file read.

    Returns:
        The file's bytes.

    Raises:
        Unusable: not a regular file (saying what it is), larger than
            `max_bytes`, or unreadable (the system's reason).
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        raise Unusable(f"unreadable: {e.strerror}") from None
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise Unusable(f"{file_kind(info.st_mode)}, not a regular file")
        if info.st_size > max_bytes:
            raise Unusable(f"{info.st_size:,} bytes, more than the {max_bytes:,} read "
                           "for one image")
        try:
            payload = f.read(max_bytes + 1)
        except OSError as e:
            raise Unusable(f"unreadable: {e.strerror}") from None
    if len(payload) > max_bytes:
        raise Unusable(f"more than the {max_bytes:,} bytes read for one image")
    return payload


_GREY_MODES = ("L", "LA", "1", "I", "F", "I;16", "I;16B", "I;16L", "I;16N")


def probe(payload: bytes) -> tuple[int, int, int]:
    """The size and channel count an image file converts to with
    convert(channels=0, size=0), read from its header where that says
    enough (palette images are decoded, since a palette of greys makes a
    grey image).

    Args:
        payload: the file's bytes.

    Returns:
        (height, width, channels): the upright size (EXIF orientation
        applied for JPEGs) and 1 for grey (with or without alpha) or 3.

    Raises:
        Unusable: as decode() does for files it cannot open.
    """
    fmt = sniff_format(payload)
    if fmt is None:
        raise Unusable("not an image (no PNG, JPEG, BMP or GIF signature)")
    try:
        with Image.open(io.BytesIO(payload), formats=[fmt]) as opened:
            mode, (width, height) = opened.mode, opened.size
            if fmt == "JPEG" and opened.getexif().get(_EXIF_ORIENTATION, 1) in (5, 6, 7, 8):
                width, height = height, width
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        why = str(e).split(" <")[0] or type(e).__name__
        raise Unusable(f"truncated or corrupt {fmt} ({why})") from None
    if mode in ("P", "PA"):
        image, _ = decode(payload)
        return image.shape[0], image.shape[1], 1 if image.shape[-1] in (1, 2) else 3
    return height, width, 1 if mode in _GREY_MODES else 3


def sniff_format(payload: bytes) -> Optional[str]:
    """The image format its first bytes say (PNG, JPEG, BMP, GIF), or None.

    The signatures are the formats' own: PNG's 8-byte signature (PNG
    specification, section 5.2), JPEG's SOI marker FF D8 followed by a
    marker's FF, BMP's "BM" file type, GIF's "GIF87a" or "GIF89a" header.

    Args:
        payload: the file's bytes (its first 8 are enough).

    Returns:
        "PNG", "JPEG", "BMP" or "GIF", or None for anything else.
    """
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


def decode(payload: bytes) -> tuple[np.ndarray, dict]:
    """Image file bytes -> (uint8 [H, W, 1..4] as stored, facts: "format",
    "mode" (in words), "exif_rotated"). Raises Unusable for an empty file,
    one that is no PNG, JPEG, BMP or GIF, or a truncated or corrupt one.

    Pillow opens the file only as the format its signature says
    (sniff_format()); of an animation, the first frame is read. A JPEG whose
    EXIF Orientation tag (0x0112) is not 1 is turned upright
    (ImageOps.exif_transpose). Palettes are expanded (to RGBA where they have
    a transparent colour, else to RGB, or to one channel where every pixel
    is grey), 16-bit grey is divided by 257 and rounded to 8 bits,
    CMYK and other colour spaces become RGB (RGBA where they have alpha).

    Args:
        payload: the whole file's bytes.

    Returns:
        (image, facts): image uint8 [H, W, C], C 1 (grey), 2 (grey+alpha),
        3 (RGB) or 4 (RGBA); facts {"format": "PNG", "JPEG", "BMP" or "GIF",
        "mode": the stored colour mode in words ("grey", "RGB", "palette",
        "grey 16-bit", "CMYK", ...), "exif_rotated": bool}.

    Raises:
        Unusable: the file is empty, has no PNG, JPEG, BMP or GIF signature,
            fails to decode (truncated, corrupt, or over Pillow's
            decompression-bomb limit), or decodes to an image with no pixels.
    """
    if not payload:
        raise Unusable("empty file")
    fmt = sniff_format(payload)
    if fmt is None:
        raise Unusable("not an image (no PNG, JPEG, BMP or GIF signature)")
    try:
        with Image.open(io.BytesIO(payload), formats=[fmt]) as opened:
            opened.load()  # the first frame of an animation
            turned = fmt == "JPEG" and opened.getexif().get(_EXIF_ORIENTATION, 1) != 1
            image, mode = _pixels(ImageOps.exif_transpose(opened) if turned else opened)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        why = str(e).split(" <")[0] or type(e).__name__  # no object reprs
        raise Unusable(f"truncated or corrupt {fmt} ({why})") from None
    if 0 in image.shape:
        raise Unusable(f"{fmt} decodes to an empty image")
    return image, {"format": fmt, "mode": mode, "exif_rotated": turned}


Size = Union[int, tuple[int, int]]


def _height_width(size: Size) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def resize(image: np.ndarray, size: Size) -> np.ndarray:
    """uint8 [H, W, C] -> uint8 [h, w, C] (size: h = w, or (h, w)), by
    Pillow's bilinear filter, which widens its support when shrinking
    (antialiased).

    The support widening is Pillow's documented behaviour for
    Image.resize's filters (Pillow handbook, "Concepts: Filters"); the aspect
    ratio is not kept.

    Args:
        image: uint8 [H, W, C]; convert() passes C 1 or 3.
        size: the target: an int for h = w, or (h, w), in pixels.

    Returns:
        uint8 [h, w, C].
    """
    height, width = _height_width(size)
    if image.shape[-1] == 1:
        return np.asarray(Image.fromarray(image[..., 0]).resize(
            (width, height), Image.Resampling.BILINEAR))[..., None]
    return np.asarray(Image.fromarray(image).resize((width, height), Image.Resampling.BILINEAR))


def convert(image: np.ndarray, channels: int, size: Size) -> tuple[np.ndarray, dict]:
    """Converts one decoded image (uint8 [H, W, 1..4]) to `channels` (1 or 3;
    0: 1 for grey and grey+alpha, else 3) and `size` (h = w, or (h, w); 0:
    as is).

    Returns (uint8 [H', W', C'], what changed: {"alpha_flattened",
    "channels", "resized"} as booleans). Alpha is composited over black.

    In order: an alpha channel is multiplied into the colour (over black)
    and dropped; RGB becomes grey by the ITU-R BT.601 luma weights as
    tf.image.rgb_to_grayscale rounds them (0.2989, 0.5870, 0.1140), grey
    becomes RGB by copying; then the image is resized (resize()) unless it
    already has the target size.

    Args:
        image: uint8 [H, W, C], C 1 to 4, as decode() returns it.
        channels: 1 grey, 3 RGB; 0: 1 for grey and grey+alpha, else 3.
        size: the target, an int for h = w or (h, w), in pixels; 0: as is.

    Returns:
        (image, changed): image uint8 [H', W', C']; changed {"alpha_flattened",
        "channels", "resized"}, each True where that step changed the image.
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
    if size and image.shape[:2] != _height_width(size):
        image = resize(image, size)
        changed["resized"] = True
    return image, changed
