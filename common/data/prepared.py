"""Prepared copies: a local dataset written once as TFRecord shards that
every later run streams (image folders, the datasets' original files).

A copy is a folder under cache_dir() named after the source and a key (a
hash of everything its content depends on: the source files' paths, sizes
and modification times, the image size and channels, how the splits are
carved), holding:

    manifest.json                       what is in it; written last
    <split>-<k>-of-<n>.tfrecord         the examples of each split

Each TFRecord record is one example, raw: its index (little-endian int64,
the example's position in the source, unique over the copy), its label
(little-endian int64), then its pixels (uint8, height x width x channels,
row-major). TFRecord frames every record with its length and a CRC-32C of
the length and of the data, which TensorFlow checks on every read; a shard's
size is thus examples x (32 + pixels) bytes, which a reader checks against the
manifest before it trusts the copy.

Writing is atomic and resumable: shards are written into `<name>.partial/`
(each as a temporary file renamed when complete, with a small progress
file beside it), and the folder is renamed to `<name>/` once the manifest is
written. A pass killed half-way leaves the partial folder; the next pass
keeps its complete shards and writes the rest (it says so in one line). A
file lock keeps two processes from preparing the same copy at once (the
second waits, then reads the first's copy); every reader holds a shared lock
on the copy it reads, and older copies of the same source are deleted only
when no process holds one.

A copy is input someone else may have made (another user's cache, a damaged
disk): the manifest is read as strict, bounded JSON and checked field by
field (names, counts, shapes, sizes on disk); a copy that fails any check is
logged, deleted and prepared again.
"""

import bisect
import dataclasses
import errno
import fcntl
import hashlib
import json
import math
import os
import pathlib
import re
import shutil
import sys
import time
from typing import Any, Callable, Iterable, Optional, Sequence, Union

from absl import logging
import numpy as np
import tensorflow as tf

from common import inputs
from common.data.splits import Split
from common.errors import UserError

CACHE_ENV = "DATA_CACHE_DIR"
FORMAT = "keras-experiments prepared data"
VERSION = 2
HEADER_BYTES = 16          # the index and the label, two little-endian int64
FRAMING_BYTES = 16         # TFRecord's length (8), its CRC (4), the data's CRC (4)
SHARD_BYTES = 64 * 2**20   # a shard's target size
MIN_SHARDS = 8             # shards per split where it has as many examples
MAX_SHARDS = 10_000
MANIFEST = "manifest.json"
MAX_MANIFEST_BYTES = 256 * 2**20
SPLITS = ("train", "validation", "test")
_SHARD_NAME = re.compile(r"(train|validation|test)-(\d{5})-of-(\d{5})\.tfrecord")
_NAME = re.compile(r"[A-Za-z0-9_.-]{1,120}")
MAX_LABEL = 2**31 - 1

# Locks held for the life of the process on the copies it reads.
_HELD: dict[str, int] = {}


def cache_dir() -> pathlib.Path:
    """Where prepared copies live: $DATA_CACHE_DIR, else
    $XDG_CACHE_HOME/keras-experiments/prepared, else under ~/.cache.

    Returns:
        The folder's path, "~" expanded; it is not created here.
    """
    if os.environ.get(CACHE_ENV):
        return pathlib.Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return pathlib.Path(base).expanduser() / "keras-experiments" / "prepared"


def shard_count(examples: int, example_bytes: int) -> int:
    """How many shards a split of `examples` examples is written as: one per
    SHARD_BYTES of records, at least MIN_SHARDS where it has that many
    examples (so the workers of a cluster can each read their own files),
    at most MAX_SHARDS.

    Args:
        examples: the split's examples (0 allowed).
        example_bytes: one example's pixels, in bytes.

    Returns:
        The number of shards, at least 1.
    """
    by_size = math.ceil(examples * (example_bytes + HEADER_BYTES + FRAMING_BYTES)
                        / SHARD_BYTES)
    return max(1, min(MAX_SHARDS, max(by_size, min(MIN_SHARDS, examples))))


def shard_name(split: str, index: int, count: int) -> str:
    """The file name of shard `index` of `count` of `split`.

    Args:
        split: train, validation or test.
        index: the shard's 0-based index.
        count: the split's shards.

    Returns:
        "<split>-<index:05d>-of-<count:05d>.tfrecord".
    """
    return f"{split}-{index:05d}-of-{count:05d}.tfrecord"


def record_bytes(index: int, label: int, image: np.ndarray) -> bytes:
    """One example as a record of a prepared copy (the module docstring's
    layout).

    Args:
        index: the example's index in its source.
        label: its class index.
        image: uint8 [H, W, C].

    Returns:
        The record's bytes: 16 header bytes, then the pixels.
    """
    return (np.array([index, label], "<i8").tobytes()
            + np.ascontiguousarray(image, np.uint8).tobytes())


# ---------------------------------------------------------------------------
# Locks.

class _Lock:
    """An advisory file lock (flock) on `path`, created if missing."""

    def __init__(self, path: pathlib.Path):
        self.path = path
        self.fd: Optional[int] = None

    def acquire(self, shared: bool = False, wait: bool = True) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
        self.fd = os.open(self.path, flags, 0o644)
        mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
        try:
            fcntl.flock(self.fd, mode if wait else mode | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            os.close(self.fd)
            self.fd = None
            return False

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing drops the flock
            self.fd = None


def _hold_shared(folder: pathlib.Path) -> None:
    """Holds a shared lock on the copy `folder` for the life of the process,
    so that no other process deletes it while this one reads it (waits while
    another process is deleting it)."""
    key = str(folder)
    if key in _HELD:
        return
    lock = _Lock(folder.with_name(folder.name + ".lock"))
    lock.acquire(shared=True)
    _HELD[key] = lock.fd


def _let_go(folder: pathlib.Path) -> None:
    """Drops this process's shared lock on the copy `folder`, if it holds one."""
    fd = _HELD.pop(str(folder), None)
    if fd is not None:
        os.close(fd)


def _delete(folder: pathlib.Path) -> bool:
    """Deletes the copy (or partial folder) `folder` if no process prepares
    or reads it (this one included): both its locks are taken without
    waiting. The
    lock files stay (a lock file removed under a waiting process would make
    two locks of one name).

    Returns:
        Whether it was deleted.
    """
    name = folder.name[:-len(".partial")] if folder.suffix == ".partial" else folder.name
    locks = [_Lock(folder.with_name(f"{name}.lock"))]
    if folder.suffix != ".partial":  # a partial folder is deleted under its own prepare lock
        locks.append(_Lock(folder.with_name(f"{name}.prepare.lock")))
    taken = []
    try:
        for lock in locks:
            if not lock.acquire(wait=False):
                return False
            taken.append(lock)
        shutil.rmtree(folder)
        return True
    except OSError:
        return False
    finally:
        for lock in taken:
            lock.release()


# ---------------------------------------------------------------------------
# Reading a copy.

@dataclasses.dataclass(frozen=True)
class Shard:
    """One file of a prepared split.

    Attributes:
        path: the TFRecord file.
        examples: the records it holds.
        kept: the records read from it (examples less the excluded ones).
    """
    path: str
    examples: int
    kept: int


@dataclasses.dataclass(frozen=True)
class PreparedSplit:
    """One split of a prepared copy.

    Attributes:
        shards: its files, in order.
        excluded: indices of records that are skipped when read (an image
            folder's duplicates), sorted.
        image_shape: (H, W, C) of every image.
    """
    shards: tuple[Shard, ...]
    excluded: tuple[int, ...]
    image_shape: tuple[int, int, int]

    @property
    def num_examples(self) -> int:
        """The examples a reader gets: the shards' kept records."""
        return sum(s.kept for s in self.shards)


@dataclasses.dataclass(frozen=True)
class Copy:
    """A complete prepared copy, checked.

    Attributes:
        folder: its folder.
        image_shape: (H, W, C).
        splits: {split: PreparedSplit}.
        extra: what the source stored beside the shards (an image folder's
            cleaning report), as read from the manifest.
        prepared: whether this process wrote it (False: read as found).
        seconds: how long preparing (or checking) it took.
    """
    folder: pathlib.Path
    image_shape: tuple[int, int, int]
    splits: dict
    extra: dict
    prepared: bool = False
    seconds: float = 0.0


def _check(condition: bool, what: str) -> None:
    if not condition:
        raise ValueError(what)


def is_count(value: Any) -> bool:
    """Whether `value` is a count: an int (not a bool) of 0 or more.

    Args:
        value: any JSON value.

    Returns:
        True for 0, 1, 2, ...
    """
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def read_copy(folder: pathlib.Path) -> Copy:
    """Reads and checks the manifest of the copy in `folder`.

    Checked: the manifest is a bounded regular file of strict JSON of this
    FORMAT and VERSION; the image shape is three positive integers; each of
    the three splits lists shards named as shard_name() makes them, in
    order, each a regular file (not a link) in `folder` whose size is its
    records times (32 + pixels) bytes; the excluded indices are integers
    whose count is what the shards' kept counts leave out.

    Args:
        folder: the copy's folder.

    Returns:
        The Copy (extra: the manifest's "extra" object).

    Raises:
        ValueError: any check fails; the message says which.
        OSError: the manifest cannot be read.
    """
    manifest = inputs.read_json(folder / MANIFEST, MAX_MANIFEST_BYTES)
    _check(isinstance(manifest, dict), "the manifest is not an object")
    _check(manifest.get("format") == FORMAT and manifest.get("version") == VERSION,
           "the manifest is of another format or version")
    shape = manifest.get("image_shape")
    _check(isinstance(shape, list) and len(shape) == 3
           and all(is_count(d) and 0 < d <= 65_535 for d in shape),
           f"image_shape {shape!r} is not three sizes")
    pixels = int(np.prod(shape))
    splits = manifest.get("splits")
    _check(isinstance(splits, dict) and sorted(splits) == sorted(SPLITS),
           "the manifest does not hold train, validation and test")
    checked = {}
    for split in SPLITS:
        entry = splits[split]
        _check(isinstance(entry, dict), f"{split} is not an object")
        listed, excluded = entry.get("shards"), entry.get("excluded")
        _check(isinstance(listed, list) and 0 < len(listed) <= MAX_SHARDS,
               f"{split} lists no shards")
        _check(isinstance(excluded, list) and all(is_count(i) for i in excluded)
               and len(set(excluded)) == len(excluded),
               f"{split}'s excluded records are not distinct indices")
        shards = []
        for k, shard in enumerate(listed):
            _check(isinstance(shard, dict), f"{split} shard {k} is not an object")
            name, examples, kept = shard.get("file"), shard.get("examples"), shard.get("kept")
            _check(name == shard_name(split, k, len(listed)),
                   f"{split} shard {k} is named {name!r}")
            _check(is_count(examples) and is_count(kept) and kept <= examples,
                   f"{name}: bad counts")
            path = folder / name
            try:
                info = os.lstat(path)
            except OSError as e:
                raise ValueError(f"{name}: {e.strerror}") from None
            _check(not os.path.islink(path) and os.path.isfile(path),
                   f"{name} is not a regular file")
            expected = examples * (HEADER_BYTES + FRAMING_BYTES + pixels)
            _check(info.st_size == expected,
                   f"{name} is {info.st_size:,} bytes, {expected:,} expected "
                   f"({examples} records of {pixels} pixels)")
            shards.append(Shard(str(path), examples, kept))
        _check(sum(s.examples - s.kept for s in shards) == len(excluded),
               f"{split}'s excluded records do not add up")
        checked[split] = PreparedSplit(tuple(shards), tuple(sorted(excluded)),
                                       tuple(int(d) for d in shape))
    extra = manifest.get("extra", {})
    _check(isinstance(extra, dict), "the manifest's extra is not an object")
    return Copy(folder, tuple(int(d) for d in shape), checked, extra)


# ---------------------------------------------------------------------------
# Writing a copy.

class Writer:
    """Writes the shards of one copy into its partial folder, keeping the
    shards an earlier, interrupted pass completed.

    Made by prepare(); the source's `write` function calls shard() for every
    shard of every split, in any order, then returns the manifest's extra.

    Args:
        partial: the partial folder (created).
        image_shape: (H, W, C) of every image.
    """

    def __init__(self, partial: pathlib.Path, image_shape: Sequence[int]):
        self.partial = partial
        self.image_shape = tuple(int(d) for d in image_shape)
        self.pixels = int(np.prod(self.image_shape))
        self.shards: dict[str, dict[int, dict]] = {split: {} for split in SPLITS}
        self.resumed = 0

    def done(self, split: str, index: int, count: int) -> Optional[dict]:
        """What a completed shard of an earlier pass recorded, or None.

        A shard counts as completed where its progress file is strict JSON
        naming it, and its file has the size its records need.

        Args:
            split: train, validation or test.
            index: the shard's index.
            count: the split's shards.

        Returns:
            The progress object (the shard's "file", "examples", "indices"
            and the source's "records") or None.
        """
        name = shard_name(split, index, count)
        try:
            progress = inputs.read_json(self.partial / f"{name}.json")
            size = os.lstat(self.partial / name).st_size
        except (OSError, ValueError):
            return None
        if (not isinstance(progress, dict) or progress.get("file") != name
                or not is_count(progress.get("examples"))
                or not isinstance(progress.get("indices"), list)
                or not all(isinstance(r, list) and len(r) == 2 and all(map(is_count, r))
                           for r in progress["indices"])
                or size != progress["examples"] * (HEADER_BYTES + FRAMING_BYTES + self.pixels)):
            return None
        self.shards[split][index] = progress
        self.resumed += 1
        return progress

    def shard(self, split: str, index: int, count: int,
              examples: Iterable[tuple[int, int, np.ndarray]], records: Any = None) -> dict:
        """Writes one shard: a temporary file renamed once complete, then its
        progress file.

        Args:
            split: train, validation or test.
            index: the shard's index.
            count: the split's shards.
            examples: (index, label, image uint8 [H, W, C]) of each record,
                in order.
            records: what the source wants kept of this shard (its files'
                facts), JSON-able; stored in the progress file. Read after
                `examples` is exhausted, so a generator may fill it.

        Returns:
            The progress object: {"file", "examples", "indices" (the
            records' indices as [start, stop) runs), "records"}.

        Raises:
            ValueError: an image of another shape than the copy's, or a
                label outside 0..MAX_LABEL.
            OSError (or TensorFlow's error for a file): the disk is full or
                not writable; the temporary file is removed.
        """
        name = shard_name(split, index, count)
        temporary = self.partial / f".{name}.tmp"
        written, runs = 0, []
        try:
            with tf.io.TFRecordWriter(str(temporary)) as writer:
                for example_index, label, image in examples:
                    if tuple(image.shape) != self.image_shape or image.dtype != np.uint8:
                        raise ValueError(f"an image of shape {image.shape} {image.dtype}, "
                                         f"not {self.image_shape} uint8")
                    if not 0 <= label <= MAX_LABEL:
                        raise ValueError(f"label {label} outside 0..{MAX_LABEL}")
                    writer.write(record_bytes(example_index, label, image))
                    written += 1
                    if runs and runs[-1][1] == example_index:
                        runs[-1][1] += 1
                    else:
                        runs.append([example_index, example_index + 1])
            os.replace(temporary, self.partial / name)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
        progress = {"file": name, "examples": written, "indices": runs,
                    "records": records() if callable(records) else records}
        _write_json(self.partial / f"{name}.json", progress)
        self.shards[split][index] = progress
        return progress

    def manifest(self, counts: dict[str, int], excluded: dict[str, Sequence[int]],
                 extra: dict) -> dict:
        """The manifest of the written shards.

        Args:
            counts: {split: its shards}.
            excluded: {split: indices of the records readers skip}.
            extra: the source's own facts.

        Returns:
            The manifest object.

        Raises:
            ValueError: a shard of `counts` was not written.
        """
        splits = {}
        for split in SPLITS:
            ordered = sorted(set(excluded.get(split, ())))
            shards = []
            for k in range(counts[split]):
                if k not in self.shards[split]:
                    raise ValueError(f"{shard_name(split, k, counts[split])} was not written")
                progress = self.shards[split][k]
                dropped = _count_in_runs(ordered, progress.get("indices", []))
                shards.append({"file": progress["file"], "examples": progress["examples"],
                               "kept": progress["examples"] - dropped})
            if sum(s["examples"] - s["kept"] for s in shards) != len(ordered):
                raise ValueError(f"{split}: an excluded record is in none of its shards")
            splits[split] = {"shards": shards, "excluded": ordered}
        return {"format": FORMAT, "version": VERSION, "image_shape": list(self.image_shape),
                "splits": splits, "extra": extra}


def _count_in_runs(ordered: list[int], runs: list) -> int:
    """How many of the sorted indices `ordered` fall in the [start, stop) runs."""
    return sum(bisect.bisect_left(ordered, stop) - bisect.bisect_left(ordered, start)
               for start, stop in runs)


def _write_json(path: pathlib.Path, payload: Any) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    with open(temporary, "w") as f:
        json.dump(payload, f, allow_nan=False, separators=(",", ":"))
    os.replace(temporary, path)


def _unusable(folder: pathlib.Path, reason: str) -> None:
    """Deletes a damaged copy (this process holds its prepare lock), or says
    in one line why it cannot."""
    logging.warning("Ignoring the prepared copy %s (%s); preparing it again", folder, reason)
    _let_go(folder)
    lock = _Lock(folder.with_name(f"{folder.name}.lock"))
    try:
        if not lock.acquire(wait=False):
            raise UserError(f"the prepared copy {folder} is damaged ({reason}) and another "
                            "process is reading it; run again once it has ended")
        try:
            shutil.rmtree(folder)
        except OSError as e:
            raise UserError(f"cannot remove the damaged prepared copy {folder}: "
                            f"{e.strerror or e}; remove it by hand") from None
    finally:
        lock.release()


def _remove_older(root: pathlib.Path, family: str, keep: str) -> None:
    """Deletes other copies of the same source and settings, and their
    abandoned partial folders, that no process prepares or reads."""
    for old in root.glob(f"{family}-*"):
        if old.name.startswith(keep) or old.suffix == ".lock":
            continue
        if old.is_dir() and not old.is_symlink():
            if old.suffix == ".partial":  # its preparation lock is the one to take
                lock = _Lock(root / f"{old.name[:-len('.partial')]}.prepare.lock")
                try:
                    if lock.acquire(wait=False):
                        shutil.rmtree(old, ignore_errors=True)
                except OSError:
                    pass
                finally:
                    lock.release()
            else:
                _delete(old)


def damaged_shard(folder: pathlib.Path) -> Optional[str]:
    """Reads every record of the copy `folder`, as TensorFlow checks them
    (each record's CRC-32C), and says where the first bad one is.

    The size check of read_copy() cannot see a byte changed in place (a
    failing disk, a hand edit): TensorFlow finds it only when it reads that
    record, mid-training. Reading a whole copy costs one pass over its bytes,
    so this runs only after such a failure (explain_data_loss()).

    Args:
        folder: a copy's folder.

    Returns:
        "<shard>: <TensorFlow's message>" for the first shard that fails to
        read, or None when every shard reads.
    """
    for path in sorted(folder.glob("*.tfrecord")):
        try:
            tf.data.TFRecordDataset(str(path)).reduce(np.int64(0), lambda n, _: n + 1)
        except tf.errors.DataLossError as e:  # "{{function_node ...}} corrupted record at 12 [Op:...]"
            message = re.sub(r"\{\{.*?\}\}|\[Op:.*", "", str(e.message)).strip().splitlines()
            return f"{path.name}: {message[0].strip() if message else 'unreadable'}"
    return None


def explain_data_loss(error: "tf.errors.DataLossError") -> Optional[UserError]:
    """Turns TensorFlow's DataLossError from reading a damaged prepared copy
    into one line, and deletes that copy so that the next run prepares it
    again.

    TensorFlow's message ("corrupted record at 12") names neither the file
    nor the copy: each copy this process reads is checked (damaged_shard()).

    Args:
        error: the error TensorFlow raised while reading input.

    Returns:
        A UserError naming the copy, the shard and what to do; None when no
        copy this process reads is damaged (the error came from elsewhere:
        a checkpoint, a TFDS file). A copy other processes still read is
        not deleted but loses its manifest, so that read_copy() refuses it
        and the next preparation replaces it.
    """
    del error  # its message says nothing of where
    for key in list(_HELD):
        folder = pathlib.Path(key)
        where = damaged_shard(folder)
        if where is None:
            continue
        _let_go(folder)
        if _delete(folder):
            then = ("it was deleted; the same command prepares it again (with the same "
                    "--run_name or --sweep_name it resumes where it stopped)")
        else:  # other readers (a sweep's workers, a cluster): no run trusts it again
            try:
                (folder / MANIFEST).unlink()
            except OSError:
                pass
            then = ("other processes read it, so it was marked damaged (its manifest "
                    "removed) and is prepared again by the first run after they end")
        return UserError(f"the prepared copy {folder} is damaged ({where}); {then}")
    return None


def key_of(parts: Any) -> str:
    """A short key for a copy: SHA-256 of the JSON of `parts`.

    Args:
        parts: what the copy's content depends on, JSON-able.

    Returns:
        24 hexadecimal digits.
    """
    return hashlib.sha256(json.dumps([VERSION, parts], sort_keys=True).encode()).hexdigest()[:24]


def prepare(family: str, key: str, image_shape: Union[Sequence[int], Callable[[], Sequence[int]]],
            write: Callable[[Writer], tuple[dict, dict, dict]], *, what: str,
            expected: Optional[Sequence[int]] = None) -> Copy:
    """The prepared copy `family`-`key`: read where complete and sound,
    else written by `write` (resuming an interrupted pass).

    Args:
        family: the source and settings, file-name safe (e.g.
            "image_folder-3f2a...-s28c1"); older copies of the same family
            are deleted once this one is complete, unless in use.
        key: key_of() what the content depends on.
        image_shape: (H, W, C) of every image, or a function that works it
            out (called only where the copy is prepared: it may read every
            source file's header).
        write: writes the shards: called as write(writer); returns (counts
            {split: shards}, excluded {split: [record indices]}, extra
            (JSON-able facts kept in the manifest)).
        what: the source in words, for the log ("Fashion-MNIST's original
            files in /usr/share/datasets/fashion-mnist").
        expected: what a copy found complete must hold, (H, W, C) with 0 for
            "any" (its own size, its own channels); default: image_shape.

    Returns:
        The checked Copy.

    Raises:
        UserError: the cache folder cannot be written (naming it and
            DATA_CACHE_DIR), or what `write` raises.
    """
    for name in (family, key):
        if not _NAME.fullmatch(name):
            raise ValueError(f"bad copy name {name!r}")
    root = cache_dir()
    name = f"{family}-{key}"
    final, partial = root / name, root / f"{name}.partial"
    start = time.perf_counter()
    try:
        root.mkdir(parents=True, exist_ok=True)
        lock = _Lock(root / f"{name}.prepare.lock")
        if not lock.acquire(wait=False):
            logging.info("Waiting for another process preparing %s", final)
            lock.acquire()
    except OSError as e:
        raise UserError(f"cannot write the prepared data to {root}: {e.strerror or e}; "
                        f"set {CACHE_ENV}=DIR to a writable folder") from None
    try:
        if final.is_dir() and not final.is_symlink():
            try:
                _hold_shared(final)  # before reading: nobody deletes it under us
                copy = read_copy(final)
                wanted = expected if expected is not None else image_shape
                if callable(wanted) or any(want and want != have for want, have in
                                           zip(wanted, copy.image_shape)):
                    raise ValueError(f"its images are {copy.image_shape}, not "
                                     f"{tuple(wanted) if not callable(wanted) else 'known'}")
                return dataclasses.replace(copy, seconds=time.perf_counter() - start)
            except (OSError, ValueError) as e:
                _unusable(final, str(e))
        elif os.path.lexists(final):
            logging.warning("Ignoring %s (not a folder); preparing the copy again", final)
            pathlib.Path(final).unlink()
        writer = Writer(partial, image_shape() if callable(image_shape) else image_shape)
        try:
            if partial.is_symlink() or (os.path.lexists(partial) and not partial.is_dir()):
                pathlib.Path(partial).unlink()
            partial.mkdir(exist_ok=True)
            counts, excluded, extra = write(writer)
            manifest = writer.manifest(counts, excluded, extra)
            _write_json(partial / MANIFEST, manifest)
            for progress in partial.glob("*.tfrecord.json"):
                progress.unlink()
            os.replace(partial, final)
        except OSError as e:
            keep = (" (the next run keeps the shards already written)"
                    if e.errno in (errno.ENOSPC, errno.EDQUOT) else "")
            raise UserError(f"cannot write the prepared data to {partial}: "
                            f"{e.strerror or e}; free space there or set {CACHE_ENV}=DIR"
                            f"{keep}") from None
        except (ValueError, TypeError, KeyError) as e:
            # An interrupted pass's progress that does not add up: start over.
            shutil.rmtree(partial, ignore_errors=True)
            raise UserError(f"the interrupted preparation in {partial} did not add up "
                            f"({type(e).__name__}: {e}); it was removed: run again to "
                            "prepare the data from the start") from None
        except tf.errors.OpError as e:
            raise UserError(f"cannot write the prepared data to {partial}: "
                            f"{str(e).splitlines()[0]}; free space there or set "
                            f"{CACHE_ENV}=DIR") from None
        _hold_shared(final)
        try:
            copy = read_copy(final)
        except (OSError, ValueError) as e:
            raise UserError(f"the prepared copy {final} just written does not read back "
                            f"({e}); remove it and run again") from None
        _remove_older(root, family, name)
        seconds = time.perf_counter() - start
        logging.info("Prepared %s in %s (%.1f s)", what, final, seconds)
        return dataclasses.replace(copy, prepared=True, seconds=seconds)
    finally:
        lock.release()


class Progress:
    """A progress bar over the examples of a preparation pass: Keras'
    Progbar on a terminal, elsewhere a log line every LOG_SECONDS (a log
    file gets a few lines, not thousands).

    Args:
        total: the examples the pass goes through.
        what: the source, for the log lines.
    """

    LOG_SECONDS = 15.0

    def __init__(self, total: int, what: str):
        import tf_keras
        self.total, self.what, self.done = total, what, 0
        self.start = self.last = time.perf_counter()
        self.bar = (tf_keras.utils.Progbar(total, unit_name="image")
                    if sys.stdout.isatty() and total else None)

    def add(self, count: int) -> None:
        """Counts `count` more examples done.

        Args:
            count: examples done since the last call.
        """
        self.done += count
        if self.bar is not None:
            self.bar.add(count)
            return
        now = time.perf_counter()
        if now - self.last >= self.LOG_SECONDS and self.done < self.total:
            self.last = now
            logging.info("Preparing %s: %d of %d images (%.0f%%), %.0f images/s", self.what,
                         self.done, self.total, 100 * self.done / self.total,
                         self.done / max(1e-9, now - self.start))


def say_resumed(writer: Writer, total: int, final: str) -> None:
    """Logs, in one line, that a pass picks up an interrupted one.

    Args:
        writer: the pass's Writer, after its done() calls.
        total: the shards of the whole copy.
        final: the copy's name, for the message.
    """
    if writer.resumed:
        logging.info("Resuming the preparation of %s: %d of %d shards were written by an "
                     "interrupted pass and are kept", final, writer.resumed, total)


# ---------------------------------------------------------------------------
# Streams of a prepared split.

def parse_records(records: tf.Tensor, image_shape: Sequence[int]):
    """Records of a prepared copy -> (indices int64, labels int64, images
    uint8): for one record ([] string) or a batch ([B] strings).

    Args:
        records: string tensor of records, [] or [B], each 16 + H*W*C bytes.
        image_shape: (H, W, C).

    Returns:
        (index [] or [B] int64, label [] or [B] int64, image [H, W, C] or
        [B, H, W, C] uint8).

    Raises:
        tf.errors.InvalidArgumentError: at run time, a record of another
            length (check_length() says which copy).
    """
    raw = tf.io.decode_raw(records, tf.uint8)
    header = tf.bitcast(tf.reshape(raw[..., :HEADER_BYTES],
                                   tf.concat([tf.shape(raw)[:-1], [2, 8]], 0)), tf.int64)
    image = tf.reshape(raw[..., HEADER_BYTES:],
                       tf.concat([tf.shape(raw)[:-1], list(image_shape)], 0))
    return header[..., 0], header[..., 1], image


def index_of(record: tf.Tensor) -> tf.Tensor:
    """The example index held by one record.

    Args:
        record: one record of a prepared copy ([] string).

    Returns:
        int64 [].
    """
    head = tf.io.decode_raw(tf.strings.substr(record, 0, 8), tf.uint8)
    return tf.reshape(tf.bitcast(tf.reshape(head, [1, 8]), tf.int64), [])


def check_length(record: tf.Tensor, image_shape: Sequence[int], where: str) -> tf.Tensor:
    """`record`, after checking that it holds 16 + H*W*C bytes.

    Args:
        record: one record ([] string) or a batch ([B] strings).
        image_shape: (H, W, C).
        where: the copy, for the message.

    Returns:
        The record, unchanged.

    Raises:
        tf.errors.InvalidArgumentError: at run time, naming the copy.
    """
    size = HEADER_BYTES + int(np.prod(image_shape))
    with tf.control_dependencies([tf.debugging.assert_equal(
            tf.strings.length(record), tf.cast(size, tf.int32),
            message=f"a record of the prepared copy {where} has the wrong length; delete "
                    "that folder and run again")]):
        return tf.identity(record)


class ShardedSplit(Split):
    """A split of a prepared copy, read as a Split (common/data/splits.py).

    Reads TFRecord shards: training reads interleave up to READ_CYCLE shards
    at once (READ_BLOCK records from each in turn) in an order reshuffled
    every iteration; evaluation reads them in order. Excluded records are skipped. Between workers the split is divided
    by shard (worker i reads shards i, i + N, ...) where it has at least as
    many shards as workers, else by record.

    Args:
        name: train, validation or test.
        split: the PreparedSplit.
        where: the copy's folder, for the log and messages.
    """

    READ_CYCLE = 4
    BALANCE = 1.1     # the largest worker's share against the smallest's, by shard
    # Records taken from one shard before the next: 1 costs twice the CPU
    # (measured: 146,000 against 234,000 records/s through the pipeline);
    # the shuffle buffer mixes the runs of 16.
    READ_BLOCK = 16

    def __init__(self, name: str, split: PreparedSplit, where: str):
        self.name = name
        self.split = split
        self.num_examples = split.num_examples
        self.image_shape = split.image_shape
        self.where = where

    def num_files(self) -> int:
        """The split's shards.

        Returns:
            How many shard files the split is read from.
        """
        return len(self.split.shards)

    def by_file(self, num_workers: int) -> bool:
        """Whether `num_workers` workers divide the split by shard: where it
        has at least as many shards as workers and the workers' shares differ
        by at most BALANCE (each worker takes batch / num_workers examples a
        step whatever its share, so unequal shares would be seen unequally
        often); else by record.

        Args:
            num_workers: the cluster's workers.

        Returns:
            True to divide by shard.
        """
        if not super().by_file(num_workers):
            return False
        shares = [sum(s.kept for s in self.split.shards[i::num_workers])
                  for i in range(num_workers)]
        return min(shares) > 0 and max(shares) <= self.BALANCE * min(shares)

    def _shards(self, num_workers: int, index: int) -> tuple[Shard, ...]:
        if self.by_file(num_workers):
            return self.split.shards[index::num_workers]
        return self.split.shards

    def share_size(self, num_workers: int, index: int) -> int:
        """Examples worker `index` of `num_workers` reads: the kept records
        of its shards, or every num_workers-th kept record.

        Args:
            num_workers: the cluster's workers (1 outside one).
            index: this worker's index.

        Returns:
            Its examples; all workers' add up to num_examples.
        """
        if num_workers <= 1:
            return self.num_examples
        if self.by_file(num_workers):
            return sum(s.kept for s in self._shards(num_workers, index))
        return self.element_share(self.num_examples, num_workers, index)

    def share_bytes(self, num_workers: int, index: int) -> int:
        """Bytes worker `index` reads from disk: its shards' records whole
        (every shard where the split is divided by record).

        Args:
            num_workers: the cluster's workers.
            index: this worker's index.

        Returns:
            The bytes of the TFRecord files it reads (framing included).
        """
        pixels = int(np.prod(self.image_shape))
        return sum(s.examples for s in self._shards(num_workers, index)) * (
            HEADER_BYTES + FRAMING_BYTES + pixels)

    def records(self, num_workers: int = 1, index: int = 0, *, shuffle_files: bool = False,
                seed: Optional[int] = None, deterministic: bool = True) -> tf.data.Dataset:
        """Worker `index`'s records, raw, excluded ones skipped (see
        Split.records).

        Args:
            num_workers: the cluster's workers.
            index: this worker's index.
            shuffle_files: interleave READ_CYCLE shards, in an order
                reshuffled every iteration; else read them in order.
            seed: the shard order's seed.
            deterministic: the interleave keeps its order.

        Returns:
            tf.data.Dataset of [] strings, 16 + H*W*C bytes each.
        """
        shards = self._shards(num_workers, index)
        files = tf.data.Dataset.from_tensor_slices([s.path for s in shards])
        cycle = min(len(shards), self.READ_CYCLE)
        by_element = num_workers > 1 and not self.by_file(num_workers)
        if by_element:  # every worker must read the same order to keep its n-th records
            deterministic = True
        if shuffle_files and len(shards) > 1:
            files = files.shuffle(len(shards), seed=seed, reshuffle_each_iteration=True)
            records = files.interleave(tf.data.TFRecordDataset, cycle_length=cycle,
                                       block_length=self.READ_BLOCK, num_parallel_calls=cycle,
                                       deterministic=deterministic)
        else:
            records = files.interleave(tf.data.TFRecordDataset, cycle_length=1)
        if self.split.excluded:
            excluded = tf.constant(self.split.excluded, tf.int64)
            last = len(self.split.excluded) - 1

            def kept(record):
                index = index_of(record)
                where = tf.searchsorted(excluded, tf.reshape(index, [1]))[0]
                return tf.logical_not(tf.equal(tf.gather(excluded, tf.minimum(where, last)),
                                               index))

            records = records.filter(kept)
        if num_workers > 1 and not self.by_file(num_workers):
            records = records.shard(num_workers, index)
        return records

    def parse_batch(self, records: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """[B] records -> (images uint8 [B, H, W, C], labels int64 [B],
        indices int64 [B]).

        Args:
            records: [B] strings of records() (or one [] string).

        Returns:
            (images, labels, indices); filler() records have index -1.

        Raises:
            tf.errors.InvalidArgumentError: at run time, a record of
                another length (naming the copy).
        """
        records = check_length(records, self.image_shape, self.where)
        index, label, image = parse_records(records, self.image_shape)
        return image, label, index

    def filler(self) -> tf.Tensor:
        """A padding record.

        Returns:
            [] string: index -1, label 0, an all-zero image.
        """
        return tf.constant(np.array([-1, 0], "<i8").tobytes()
                           + bytes(int(np.prod(self.image_shape))))

    def examples(self, num_workers: int = 1, index: int = 0, *, shuffle_files: bool = False,
                 seed: Optional[int] = None, deterministic: bool = True) -> tf.data.Dataset:
        """Worker `index`'s records, parsed one by one (see Split.examples).

        Args:
            num_workers: the cluster's workers.
            index: this worker's index.
            shuffle_files: as for records().
            seed: as for records().
            deterministic: parallel reads and parses keep their order.

        Returns:
            tf.data.Dataset of (image uint8 [H, W, C], label int64 []).
        """
        def parse(record):
            image, label, _ = self.parse_batch(record)
            return image, label

        return self.records(num_workers, index, shuffle_files=shuffle_files, seed=seed,
                            deterministic=deterministic).map(
            parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)


def splits_of(copy: Copy) -> dict[str, ShardedSplit]:
    """The copy's three splits as readers.

    Args:
        copy: a checked Copy.

    Returns:
        {split: ShardedSplit}.
    """
    return {name: ShardedSplit(name, copy.splits[name], str(copy.folder)) for name in SPLITS}
