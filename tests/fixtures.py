"""Fixture files in the datasets' original formats, written by the tests."""

import contextlib
import csv
import gzip
import io
import os
import pathlib
import signal
import struct
import subprocess
import tarfile
import threading
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


FASHION_MNIST = pathlib.Path("/usr/share/datasets/fashion-mnist")


def fashion_mnist_subset(folder: pathlib.Path, num_train: int, num_test: int) -> pathlib.Path:
    """The first `num_train` and `num_test` images of real Fashion-MNIST as
    IDX .gz files in `folder` where Debian's dataset-fashion-mnist is
    installed; else write_idx_dataset()'s learnable images (CI)."""
    if not (FASHION_MNIST / "t10k-labels-idx1-ubyte.gz").is_file():
        return write_idx_dataset(folder, num_train, num_test)
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, count in (("train", num_train), ("t10k", num_test)):
        for kind, header in (("images-idx3", 16), ("labels-idx1", 8)):
            name = f"{prefix}-{kind}-ubyte.gz"
            data = gzip.open(FASHION_MNIST / name).read()
            size = 784 if kind.startswith("images") else 1
            head = bytearray(data[:header])
            head[4:8] = struct.pack(">I", count)
            with gzip.open(folder / name, "wb") as f:
                f.write(bytes(head) + data[header:header + count * size])
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


CGROUP_MEMORY = pathlib.Path("/sys/fs/cgroup/memory")


def memory_cgroup_reason() -> str:
    """Why a process cannot be put in a memory cgroup here ("" where it can):
    cgroup v1's memory controller and root are needed."""
    if os.geteuid() != 0:
        return "memory cgroups need root"
    if not (CGROUP_MEMORY / "cgroup.procs").is_file():
        return f"no cgroup v1 memory controller at {CGROUP_MEMORY}"
    return ""


@contextlib.contextmanager
def memory_cgroup(limit_bytes: int):
    """A new cgroup v1 memory group limited to `limit_bytes` (no swap);
    yields its folder; removed afterwards (its processes must have ended)."""
    reason = memory_cgroup_reason()
    if reason:
        raise RuntimeError(reason)
    group = CGROUP_MEMORY / f"keras-experiments-{os.getpid()}-{time.monotonic_ns()}"
    group.mkdir()
    try:
        (group / "memory.limit_in_bytes").write_text(str(limit_bytes))
        swap = group / "memory.memsw.limit_in_bytes"
        if swap.exists():
            swap.write_text(str(limit_bytes))
        yield group
    finally:
        for _ in range(50):
            try:
                group.rmdir()
                break
            except OSError:
                time.sleep(0.1)


def run_measured(args: list, group: pathlib.Path = None, timeout: float = 1800,
                 **popen) -> dict:
    """Runs `args` to its end (inside the memory cgroup `group` if given,
    joined before exec) and returns {"returncode", "peak_rss_bytes" (the
    child's, from wait4), "oom_kills" (the group's, where one was given),
    "stdout", "stderr", "seconds"}."""
    def join():
        if group is not None:
            (group / "cgroup.procs").write_text(str(os.getpid()))

    start = time.perf_counter()
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               preexec_fn=join, **popen)
    output = {}

    def drain(name, stream):
        output[name] = stream.read()

    readers = [threading.Thread(target=drain, args=(n, s))
               for n, s in (("stdout", process.stdout), ("stderr", process.stderr))]
    for reader in readers:
        reader.start()
    timer = threading.Timer(timeout, process.kill)
    timer.start()
    try:
        _, status, usage = os.wait4(process.pid, 0)
    finally:
        timer.cancel()
    process.returncode = os.waitstatus_to_exitcode(status)
    for reader in readers:
        reader.join()
    oom = None
    if group is not None:
        control = (group / "memory.oom_control").read_text()
        oom = int(next((line.split()[1] for line in control.splitlines()
                        if line.startswith("oom_kill ")), "0"))
    return {"returncode": process.returncode, "peak_rss_bytes": usage.ru_maxrss * 1024,
            "oom_kills": oom, "stdout": output["stdout"].decode(errors="replace"),
            "stderr": output["stderr"].decode(errors="replace"),
            "seconds": time.perf_counter() - start}


def tinted_folder(root: pathlib.Path, count: int, size: int = 192, quality: int = 85,
                  images: np.ndarray = None, labels: np.ndarray = None) -> pathlib.Path:
    """`count` images as RGB JPEG files (quality `quality`) in ten class
    folders: 28x28 grey images (Fashion-MNIST's where given, else learnable
    ones) upscaled to size x size and tinted by class. Reused where a
    complete folder of that count is there already (a marker file says so)."""
    from PIL import Image
    marker = root / f".complete-{count}-{size}-{quality}"
    if marker.exists():
        return root
    if images is None:
        labels = np.arange(count) % 10
        images = learnable_images(labels, seed=11)
    tints = np.array([[1.0, 0.4, 0.4], [0.4, 1.0, 0.4], [0.4, 0.4, 1.0], [1.0, 1.0, 0.4],
                      [1.0, 0.4, 1.0], [0.4, 1.0, 1.0], [1.0, 0.7, 0.4], [0.7, 0.4, 1.0],
                      [0.4, 0.7, 1.0], [0.8, 0.8, 0.8]])
    for i in range(count):
        label = int(labels[i % len(labels)])
        grey = Image.fromarray(images[i % len(images)].reshape(28, 28)).resize(
            (size, size), Image.Resampling.BILINEAR)
        rgb = np.asarray(grey, np.float32)[..., None] * tints[label]
        path = root / f"class_{label}" / f"{i:06d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rgb.astype(np.uint8)).save(path, quality=quality)
    marker.write_text("")
    return root
