"""Readers for datasets' original distribution files, with validation.

TFDS' own manual_dir route rejects re-compressed or repackaged copies (its
checksums differ), and offline users have exactly such copies, so the files
are read here: MNIST / Fashion-MNIST IDX (`*-idx?-ubyte[.gz]`) and CIFAR-10's
binary version (`cifar-10-binary.tar.gz` or its `cifar-10-batches-bin/`).

Each format's `streams` returns {"train": Stream, "test": Stream}: the
example count and image shape from the files' headers, and a generator that
reads the images in order, a block at a time (memory does not grow with the
dataset); common/data/sources.py writes them once into a prepared copy
(common/data/prepared.py). A missing, truncated or inconsistent file is a
UserError naming the file, found before the pass (headers, sizes, labels)
or during it (a file shorter than its header promises).
"""

import dataclasses
import gzip
import pathlib
import struct
import tarfile
from typing import Callable, Iterator, Optional
from zlib import error as zlib_error  # a truncated or damaged gzip stream

import numpy as np

from common.errors import UserError


@dataclasses.dataclass(frozen=True)
class Stream:
    """One split of original files, read in order without holding it.

    Attributes:
        count: its examples (from the files' headers or sizes).
        image_shape: (H, W, C).
        files: the files it reads (their sizes and times key the prepared
            copy).
        examples: a function that returns a generator of (image uint8
            [H, W, C], label int) in the files' order; it raises UserError
            naming a file that turns out shorter than promised or holds a
            label outside the classes.
    """
    count: int
    image_shape: tuple[int, int, int]
    files: tuple[pathlib.Path, ...]
    examples: Callable[[], Iterator[tuple[np.ndarray, int]]]


@dataclasses.dataclass(frozen=True)
class LocalFormat:
    """How to find and read one dataset's original files.

    Attributes:
        locate: folder -> the path `streams` takes (the folder itself, an
            extracted sub-folder or an archive), or None where the files are
            not there; raises UserError where only some of them are.
        streams: that path -> {"train": Stream, "test": Stream}; raises
            UserError for a missing, truncated or inconsistent file, naming
            it.
        num_classes: labels are 0..num_classes-1.
        description: what a user must provide, for error messages.
    """
    locate: Callable[[pathlib.Path], Optional[pathlib.Path]]
    streams: Callable[[pathlib.Path], dict]
    num_classes: int
    description: str

    def read(self, path: pathlib.Path) -> dict:
        """The whole of both splits as arrays (for tests and small tools;
        runs stream them).

        Args:
            path: what `locate` returned.

        Returns:
            {"train": (images uint8 [N, H, W, C], labels int64 [N]), "test":
            (...)}.

        Raises:
            UserError: as `streams` and their generators do.
        """
        arrays = {}
        for split, stream in self.streams(path).items():
            pairs = list(stream.examples())
            images = (np.stack([image for image, _ in pairs]) if pairs
                      else np.zeros((0,) + stream.image_shape, np.uint8))
            arrays[split] = (images, np.array([label for _, label in pairs], np.int64))
        return arrays


_BLOCK = 4096              # records read at a time


def _open(path: pathlib.Path):
    try:
        return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")
    except OSError as e:
        raise UserError(f"corrupt data file {path}: {e}") from None


def _read_exactly(f, size: int, path: pathlib.Path) -> bytes:
    try:
        data = f.read(size)
    except (OSError, EOFError, gzip.BadGzipFile, zlib_error) as e:
        raise UserError(f"corrupt data file {path}: {e}") from None
    return data


def _read_bytes(path: pathlib.Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile, zlib_error) as e:
        raise UserError(f"corrupt data file {path}: {e}") from None


def _find(folder: pathlib.Path, name: str) -> Optional[pathlib.Path]:
    for candidate in (folder / f"{name}.gz", folder / name):
        if candidate.is_file():
            return candidate
    return None


def _check_labels(labels: np.ndarray, num_classes: int, where: str) -> None:
    if len(labels) and labels.max() >= num_classes:
        raise UserError(f"corrupt data file {where}: label {labels.max()} "
                        f"outside 0..{num_classes - 1}")


# ---------------------------------------------------------------------------
# MNIST and Fashion-MNIST: IDX files.

IDX_IMAGES_MAGIC = 0x00000803  # unsigned byte, 3 dimensions
IDX_LABELS_MAGIC = 0x00000801  # unsigned byte, 1 dimension
_IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_IDX_NAMES = tuple(name for pair in _IDX_FILES.values() for name in pair)


def read_idx(path: pathlib.Path, magic: int) -> np.ndarray:
    """Reads one IDX file, checking its magic number and its length.

    The IDX format is the one described on the MNIST database's page
    (yann.lecun.com/exdb/mnist): a big-endian 32-bit magic number (two zero
    bytes, the element type, 0x08 for unsigned bytes, and the number of
    dimensions), one big-endian 32-bit size per dimension, then the data.

    Args:
        path: the file, gzip-compressed where its name ends in .gz.
        magic: the magic number expected (IDX_IMAGES_MAGIC or
            IDX_LABELS_MAGIC); its low byte is the number of dimensions.

    Returns:
        uint8 array of the header's shape ([N, 28, 28] images, [N] labels for
        MNIST), a read-only view of the file's bytes.

    Raises:
        UserError: the file cannot be read or decompressed, is shorter than
            its header, has another magic number, or holds more or fewer
            bytes than its header promises.
    """
    data = _read_bytes(path)
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(data) < header:
        raise UserError(f"corrupt data file {path}: too short for an IDX header")
    (found,) = struct.unpack(">I", data[:4])
    if found != magic:
        raise UserError(f"corrupt data file {path}: magic number {found:#010x}, "
                        f"expected {magic:#010x}")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    expected = int(np.prod(shape))
    if len(data) - header != expected:
        raise UserError(f"corrupt data file {path}: header promises {shape} "
                        f"({expected} bytes) but holds {len(data) - header}")
    return np.frombuffer(data, np.uint8, offset=header).reshape(shape)


def _locate_idx(folder: pathlib.Path) -> Optional[pathlib.Path]:
    present = [name for name in _IDX_NAMES if _find(folder, name)]
    if present and len(present) < len(_IDX_NAMES):
        missing = sorted(set(_IDX_NAMES) - set(present))
        raise UserError(f"{folder} has some of the IDX files but not {missing[0]}(.gz)")
    return folder if present else None


def _idx_header(f, path: pathlib.Path, magic: int) -> tuple[int, ...]:
    """Reads and checks an IDX header from the open file `f`: its shape."""
    ndim = magic & 0xFF
    header = _read_exactly(f, 4 + 4 * ndim, path)
    if len(header) < 4 + 4 * ndim:
        raise UserError(f"corrupt data file {path}: too short for an IDX header")
    (found,) = struct.unpack(">I", header[:4])
    if found != magic:
        raise UserError(f"corrupt data file {path}: magic number {found:#010x}, "
                        f"expected {magic:#010x}")
    return struct.unpack(f">{ndim}I", header[4:])


def _idx_images(path: pathlib.Path, labels: np.ndarray
                ) -> Iterator[tuple[np.ndarray, int]]:
    """The images of an IDX file with their labels, a block at a time."""
    with _open(path) as f:
        count, height, width = _idx_header(f, path, IDX_IMAGES_MAGIC)
        size = height * width
        for start in range(0, count, _BLOCK):
            n = min(_BLOCK, count - start)
            block = _read_exactly(f, n * size, path)
            if len(block) != n * size:
                raise UserError(f"corrupt data file {path}: header promises {count} images "
                                f"but the file ends after {start + len(block) // size}")
            images = np.frombuffer(block, np.uint8).reshape(n, height, width, 1)
            for i in range(n):
                yield images[i], int(labels[start + i])
        if _read_exactly(f, 1, path):
            raise UserError(f"corrupt data file {path}: it holds more than the {count} "
                            "images its header promises")


def _idx_streams(folder: pathlib.Path) -> dict:
    streams = {}
    for split, (images_name, labels_name) in _IDX_FILES.items():
        images_path, labels_path = _find(folder, images_name), _find(folder, labels_name)
        labels = read_idx(labels_path, IDX_LABELS_MAGIC)  # one byte an example
        with _open(images_path) as f:
            count, height, width = _idx_header(f, images_path, IDX_IMAGES_MAGIC)
        if (height, width) != (28, 28):
            raise UserError(f"corrupt data file {images_path}: images are "
                            f"({height}, {width}), expected (28, 28)")
        if count != len(labels):
            raise UserError(f"{images_path} holds {count} images but "
                            f"{labels_path} holds {len(labels)} labels")
        _check_labels(labels, 10, str(labels_path))
        streams[split] = Stream(count, (28, 28, 1), (images_path, labels_path),
                                lambda p=images_path, y=labels: _idx_images(p, y))
    return streams


IDX = LocalFormat(
    locate=_locate_idx, streams=_idx_streams, num_classes=10,
    description="the original files (" + ", ".join(f"{n}.gz" for n in _IDX_NAMES) + ")")


# ---------------------------------------------------------------------------
# CIFAR-10, binary version: records of 1 label byte + 3x32x32 pixel bytes
# (red plane, green plane, blue plane, each row-major).

CIFAR10_RECORD = 1 + 3 * 32 * 32
CIFAR10_ARCHIVE = "cifar-10-binary.tar.gz"
CIFAR10_FOLDER = "cifar-10-batches-bin"
_CIFAR10_FILES = {
    "train": tuple(f"data_batch_{i}.bin" for i in range(1, 6)),
    "test": ("test_batch.bin",),
}


def _locate_cifar10(folder: pathlib.Path) -> Optional[pathlib.Path]:
    for candidate in (folder / CIFAR10_FOLDER, folder / CIFAR10_ARCHIVE):
        if candidate.exists():
            return candidate
    if (folder / "test_batch.bin").is_file() or (folder / "data_batch_1.bin").is_file():
        return folder  # pointed straight at the extracted folder
    return None


def parse_cifar10_records(data: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
    """Decodes CIFAR-10 binary records into NHWC uint8 images and labels.

    The record layout is the one described on the CIFAR-10 page
    (www.cs.toronto.edu/~kriz/cifar.html): 1 label byte, then 3072 pixel
    bytes, the red, green and blue 32x32 planes, each row-major.

    Args:
        data: whole records, concatenated (one data_batch_N.bin or
            test_batch.bin).
        where: the file's name, for messages.

    Returns:
        (images uint8 [N, 32, 32, 3], labels int64 [N]).

    Raises:
        UserError: `data` is empty or not a whole number of CIFAR10_RECORD
            bytes, or a label is 10 or more.
    """
    if not data or len(data) % CIFAR10_RECORD:
        raise UserError(f"corrupt data file {where}: {len(data)} bytes is not a "
                        f"whole number of {CIFAR10_RECORD}-byte records")
    records = np.frombuffer(data, np.uint8).reshape(-1, CIFAR10_RECORD)
    labels = records[:, 0].astype(np.int64)
    _check_labels(labels, 10, where)
    images = records[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels


def _cifar10_sizes(path: pathlib.Path) -> dict[str, int]:
    """File name -> bytes of the wanted members, from the folder or the
    archive's headers."""
    wanted = {name for names in _CIFAR10_FILES.values() for name in names}
    if path.is_dir():
        return {name: (path / name).stat().st_size for name in wanted
                if (path / name).is_file()}
    try:
        with tarfile.open(path, "r:gz") as archive:
            return {pathlib.PurePosixPath(m.name).name: m.size for m in archive.getmembers()
                    if m.isfile() and pathlib.PurePosixPath(m.name).name in wanted}
    except (tarfile.TarError, OSError, EOFError, zlib_error) as e:
        raise UserError(f"corrupt data file {path}: {e}") from None


def _cifar10_records(path: pathlib.Path, names: tuple[str, ...]
                     ) -> Iterator[tuple[np.ndarray, int]]:
    """The records of the named files, in order, a block at a time."""
    def blocks(f, where):
        while True:
            block = _read_exactly(f, _BLOCK * CIFAR10_RECORD, where)
            if not block:
                return
            images, labels = parse_cifar10_records(block, where)
            for image, label in zip(images, labels):
                yield image, int(label)

    if path.is_dir():
        for name in names:
            with _open(path / name) as f:
                yield from blocks(f, path / name)
        return
    try:
        with tarfile.open(path, "r:gz") as archive:
            members = {pathlib.PurePosixPath(m.name).name: m for m in archive.getmembers()
                       if m.isfile()}
            for name in names:
                with archive.extractfile(members[name]) as f:
                    yield from blocks(f, pathlib.Path(f"{path}/{name}"))
    except (tarfile.TarError, OSError, EOFError, zlib_error) as e:
        raise UserError(f"corrupt data file {path}: {e}") from None


def _cifar10_streams(path: pathlib.Path) -> dict:
    sizes = _cifar10_sizes(path)
    streams = {}
    for split, names in _CIFAR10_FILES.items():
        for name in names:
            if name not in sizes:
                raise UserError(f"{path} lacks {name}")
            if not sizes[name] or sizes[name] % CIFAR10_RECORD:
                raise UserError(f"corrupt data file {path}/{name}: {sizes[name]} bytes is not "
                                f"a whole number of {CIFAR10_RECORD}-byte records")
        files = tuple(path / name for name in names) if path.is_dir() else (path,)
        streams[split] = Stream(sum(sizes[n] for n in names) // CIFAR10_RECORD, (32, 32, 3),
                                files, lambda n=names: _cifar10_records(path, n))
    return streams


CIFAR10 = LocalFormat(
    locate=_locate_cifar10, streams=_cifar10_streams, num_classes=10,
    description=f"{CIFAR10_ARCHIVE} or its extracted {CIFAR10_FOLDER}/")

# Class names in class-index order (the datasets' own documentation).
CLASS_NAMES: dict[str, tuple[str, ...]] = {
    "mnist": tuple(str(d) for d in range(10)),
    "fashion_mnist": ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
                      "Shirt", "Sneaker", "Bag", "Ankle boot"),
    "cifar10": ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                "ship", "truck"),
}

# Datasets with a reader for their original files.
LOCAL_FORMATS: dict[str, LocalFormat] = {
    "mnist": IDX,
    "fashion_mnist": IDX,
    "cifar10": CIFAR10,
}


def locate(name: str, folder: pathlib.Path) -> Optional[pathlib.Path]:
    """Where `name`'s original files are: in `folder` or a sub-folder named
    after the dataset (`fashion_mnist` or Debian's `fashion-mnist`).

    Args:
        name: the dataset's TFDS name (mnist, fashion_mnist, cifar10).
        folder: the folder to look in (--data_dir, or SYSTEM_DATASETS_DIR).

    Returns:
        The path LOCAL_FORMATS[name].read takes, from the first of `folder`,
        folder/name and folder/name-with-dashes that has the files; None
        where none has them or `name` has no reader here.

    Raises:
        UserError: a folder has some of the IDX files but not all (from the
            format's locate).
    """
    fmt = LOCAL_FORMATS.get(name)
    if fmt is None:
        return None
    for candidate in (folder, folder / name, folder / name.replace("_", "-")):
        if candidate.is_dir():
            found = fmt.locate(candidate)
            if found is not None:
                return found
    return None
