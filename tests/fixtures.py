"""Fixture files in the datasets' original formats, written by the tests."""

import csv
import gzip
import io
import pathlib
import signal
import struct
import subprocess
import tarfile
import time
from typing import Callable

import numpy as np
import pytest

IMAGES_MAGIC, LABELS_MAGIC = 0x00000803, 0x00000801


def idx_bytes(array: np.ndarray, magic: int) -> bytes:
    header = struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def learnable_images(labels: np.ndarray, seed: int) -> np.ndarray:
    """28x28 images whose class is a bright 6x6 patch at a class-specific
    place, over noise: a small CNN learns them in a few epochs."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 60, size=(len(labels), 28, 28), dtype=np.uint8)
    for i, label in enumerate(labels):
        row, col = 2 + (label // 5) * 13, 1 + (label % 5) * 5
        images[i, row:row + 6, col:col + 6] = 255
    return images


def write_idx_dataset(folder: pathlib.Path, num_train: int = 600,
                      num_test: int = 200, seed: int = 0) -> pathlib.Path:
    """Writes the four MNIST IDX .gz files into `folder`; returns it."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for prefix, count in (("train", num_train), ("t10k", num_test)):
        labels = rng.integers(0, 10, size=count)
        images = learnable_images(labels, seed + count)
        with gzip.open(folder / f"{prefix}-images-idx3-ubyte.gz", "wb") as f:
            f.write(idx_bytes(images, IMAGES_MAGIC))
        with gzip.open(folder / f"{prefix}-labels-idx1-ubyte.gz", "wb") as f:
            f.write(idx_bytes(labels, LABELS_MAGIC))
    return folder


def write_cifar10_batches(folder: pathlib.Path, records_per_batch: int = 40,
                          seed: int = 0, archive: bool = False) -> pathlib.Path:
    """Writes CIFAR-10's binary version (5 data batches and a test batch) as
    `cifar-10-batches-bin/` under `folder`, or as `cifar-10-binary.tar.gz`.
    Images carry a colour hint of their class."""

    rng = np.random.default_rng(seed)
    batches = {}
    for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
        labels = rng.integers(0, 10, size=records_per_batch).astype(np.uint8)
        images = rng.integers(0, 80, size=(records_per_batch, 3, 32, 32)).astype(np.uint8)
        images[np.arange(records_per_batch), labels % 3] += 150  # channel hint
        records = np.concatenate([labels[:, None], images.reshape(records_per_batch, -1)], 1)
        batches[name] = records.tobytes()
    folder.mkdir(parents=True, exist_ok=True)
    if archive:
        path = folder / "cifar-10-binary.tar.gz"
        with tarfile.open(path, "w:gz") as tar:
            for name, payload in batches.items():
                info = tarfile.TarInfo(f"cifar-10-batches-bin/{name}")
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
        return path
    out = folder / "cifar-10-batches-bin"
    out.mkdir(exist_ok=True)
    for name, payload in batches.items():
        (out / name).write_bytes(payload)
    return out


def free_port() -> int:
    """A localhost port the OS says is free now."""
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def history_epochs(run_dir: pathlib.Path) -> list[int]:
    """The epoch column of a run's history.csv, raw (duplicates kept)."""
    path = pathlib.Path(run_dir) / "history.csv"
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return [int(row["epoch"]) for row in csv.DictReader(f)]


def kill_when(process: subprocess.Popen, ready: Callable[[], bool], timeout: float = 240,
              settle: float = 0.0) -> None:
    """SIGKILLs `process` as soon as `ready()` holds (after `settle` seconds
    more); fails the test if the process ends first."""
    deadline = time.monotonic() + timeout
    while not ready() and time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail("the run ended before it could be interrupted")
        time.sleep(0.05)
    time.sleep(settle)
    process.send_signal(signal.SIGKILL)
    process.wait()


def split_arrays(split) -> tuple[np.ndarray, np.ndarray]:
    """A (small) split as arrays: images uint8 [N, H, W, C], labels int64 [N]."""
    images, labels = [], []
    for batch_images, batch_labels in split.dataset().batch(1024):
        images.append(batch_images.numpy())
        labels.append(batch_labels.numpy())
    return np.concatenate(images), np.concatenate(labels).astype(np.int64)
