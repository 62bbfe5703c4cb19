"""Reading a file someone else may have made: a regular file (not a
symbolic link, FIFO or device), of bounded size, strict JSON.

Below every layer (like common/errors.py): run folders, sweeps,
hyperparameter files and labels are all read through it.
"""

import errno
import json
import os
import pathlib
import stat
from typing import Any

# The largest JSON file a reader takes: metrics.json with a long history is
# well under 1 MB.
MAX_JSON_BYTES = 64 * 2**20


def read_json(path: pathlib.Path, max_bytes: int = MAX_JSON_BYTES) -> Any:
    """The JSON value in the file at `path`, read as input someone else may
    have made: a regular file (not a symbolic link, FIFO or device), at most
    `max_bytes` long, strict JSON (no NaN or Infinity).

    Args:
        path: the JSON file to read.
        max_bytes: the largest file read, in bytes.

    Returns:
        The parsed value (a dict, list, str, number, bool or None).

    Raises:
        OSError: the file cannot be opened or read.
        ValueError: it is a symbolic link, not a regular file, larger than
            `max_bytes`, not strict JSON (json.JSONDecodeError) or nested
            deeper than Python's recursion limit.
    """
    try:
        return json.loads(read_bytes(path, max_bytes), parse_constant=_no_constant)
    except RecursionError:
        raise ValueError(f"{path} nests too deeply") from None


def read_bytes(path: pathlib.Path, max_bytes: int) -> bytes:
    """The whole content of the regular file at `path`, opened without
    following a symbolic link and refused above `max_bytes`.

    Args:
        path: the file to read.
        max_bytes: the largest file read, in bytes.

    Returns:
        The file's bytes.

    Raises:
        OSError: the file cannot be opened or read.
        ValueError: it is a symbolic link, not a regular file (a FIFO, a
            device, a folder), or larger than `max_bytes`.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise ValueError(f"{path} is a symbolic link") from None
        raise
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise ValueError(f"{path} is not a regular file")
        if info.st_size > max_bytes:
            raise ValueError(f"{path} is {info.st_size:,} bytes, more than the "
                             f"{max_bytes:,} read")
        payload = f.read(max_bytes + 1)
    if len(payload) > max_bytes:
        raise ValueError(f"{path} is more than the {max_bytes:,} bytes read")
    return payload


def _no_constant(name: str):
    raise ValueError(f"{name} is not JSON")
