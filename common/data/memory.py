"""How much memory a run may spend on holding data, and which splits it holds.

A split is cached in memory only when it fits the budget: a share
(BUDGET_FRACTION) of the memory available to this process, which is the
smaller of the machine's available memory (/proc/meminfo's MemAvailable) and
every memory limit of the process's control groups (cgroup v1's
memory.limit_in_bytes, cgroup v2's memory.max, the group's and its
ancestors'). Splits that do not fit stream from disk every epoch. The budget
can be set by hand with --data_memory_budget (a size such as 512M or 2G, or 0
to stream everything).
"""

import dataclasses
import math
import os
import pathlib
import re
from typing import Optional, Union

from common.errors import UserError

BUDGET_FRACTION = 0.25     # of the memory available to the process
CGROUP_ROOT = pathlib.Path("/sys/fs/cgroup")
# cgroup v1 writes "no limit" as the largest page-aligned signed 64-bit value.
_NO_LIMIT = 1 << 60
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def _read_int(path: pathlib.Path) -> Optional[int]:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    if text == "max":
        return None
    try:
        value = int(text)
    except ValueError:
        return None
    return value if 0 < value < _NO_LIMIT else None


def _cgroup_limits(proc_cgroup: pathlib.Path = pathlib.Path("/proc/self/cgroup"),
                   root: pathlib.Path = CGROUP_ROOT) -> list[int]:
    """The memory limits of this process's control groups and their
    ancestors, in bytes (none where there is no limit)."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return []
    limits = []
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if "memory" in controllers.split(","):
            base, name = root / "memory", "memory.limit_in_bytes"       # v1
        elif controllers == "":
            base, name = root, "memory.max"                             # v2
            if not (base / "cgroup.controllers").is_file():
                base = root / "unified"
        else:
            continue
        folder = base / path.lstrip("/")
        while True:
            value = _read_int(folder / name)
            if value is not None:
                limits.append(value)
            if folder == base or base not in folder.parents:
                break
            folder = folder.parent
    return limits


def _meminfo_available(meminfo: pathlib.Path = pathlib.Path("/proc/meminfo")) -> Optional[int]:
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


@dataclasses.dataclass(frozen=True)
class Available:
    """The memory available to this process.

    Attributes:
        bytes: the smaller of the machine's available memory and the
            cgroup limits, in bytes.
        limited_by: "cgroup limit" or "available memory", what set `bytes`.
    """
    bytes: int
    limited_by: str


def available() -> Available:
    """The memory this process may use: the smaller of /proc/meminfo's
    MemAvailable and every memory limit of its control groups (v1 and v2,
    the group's own and its ancestors').

    Returns:
        Available; where neither can be read (not Linux), os.sysconf's
        physical memory, else 8 GiB.
    """
    machine = _meminfo_available()
    if machine is None:
        try:
            machine = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError, AttributeError):
            machine = 8 << 30
    limits = _cgroup_limits()
    if limits and min(limits) < machine:
        return Available(min(limits), "cgroup limit")
    return Available(machine, "available memory")


MAX_BUDGET = 2**50  # 1024T: more than any machine has, well inside an int64


def parse_size(text: Union[str, int]) -> int:
    """A size in bytes from "0", "512M", "2G", "1.5G", "4096" (K, M, G, T are
    powers of 1,024; a trailing "B" or "iB" is allowed).

    Args:
        text: the size, as a flag gives it.

    Returns:
        The size in bytes.

    Raises:
        UserError: not a size, or above MAX_BUDGET (1024T), naming the
            value and the valid forms.
    """
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*", str(text), re.I)
    if not match:
        raise UserError(f"--data_memory_budget={text!r} is not a size; use auto, 0 (stream "
                        "every split), or a size such as 512M or 2G")
    value = float(match.group(1)) * _UNITS[match.group(2).upper()]
    if not math.isfinite(value) or value > MAX_BUDGET:  # tf.data's ram_budget is an int64
        raise UserError(f"--data_memory_budget={text!r} is above the largest budget, 1024T; "
                        "use auto, 0 (stream every split), or a size such as 512M or 2G")
    return int(value)


def human(size: float) -> str:
    """A byte count in words: "42.3 MB", "7.72 GB" (powers of 1,000).

    Args:
        size: bytes.

    Returns:
        The size with two or three significant digits and a unit.
    """
    for unit in ("B", "kB", "MB", "GB"):
        if abs(size) < 1000:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.3g} {unit}"
        size /= 1000
    return f"{size:.3g} TB"


@dataclasses.dataclass
class Budget:
    """What may still be cached in memory, split by split.

    Attributes:
        total: the budget in bytes.
        how: how it was set, for the log ("25% of 23.5 GB available
            memory", "--data_memory_budget=2G").
        left: bytes not yet given to a split.
    """
    total: int
    how: str
    left: int = -1

    def __post_init__(self):
        if self.left < 0:
            self.left = self.total

    def take(self, size: int) -> bool:
        """Gives `size` bytes of the budget to one split if they fit.

        Args:
            size: the split's bytes once decoded.

        Returns:
            Whether the split may be cached in memory (the bytes are then
            taken from `left`).
        """
        if size <= self.left:
            self.left -= size
            return True
        return False


def budget(setting: Optional[str] = "auto") -> Budget:
    """The data's memory budget for a --data_memory_budget setting.

    Args:
        setting: "auto" or None (BUDGET_FRACTION of available()), or a size
            for parse_size() ("0": stream every split).

    Returns:
        A Budget with nothing taken yet.

    Raises:
        UserError: a setting that is neither auto nor a size.
    """
    if setting in (None, "", "auto"):
        found = available()
        return Budget(int(found.bytes * BUDGET_FRACTION),
                      f"{BUDGET_FRACTION:.0%} of the {human(found.bytes)} "
                      f"{'cgroup limit' if found.limited_by == 'cgroup limit' else 'available'}")
    return Budget(parse_size(setting), f"--data_memory_budget={setting}")
