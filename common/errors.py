"""The exception types for what a user should read as one line."""

import re


class UserError(Exception):
    """A bad flag, a missing file, absent hardware: reported as one line.

    launch.py prints the message (no traceback) and exits non-zero. The
    message must name the bad value and, where there is a fixed set of valid
    values, list them.
    """


class RunFailed(UserError):
    """A run that ended without a result (it diverged, for example). Its
    metrics.json says status "failed" and why; launch.py exits non-zero."""


def one_line(error: BaseException) -> str:
    """The first sentence of an error's message, for a one-line report.

    TensorFlow's messages run to many lines: only the first line is kept,
    and of it only the text before its first ". " when more follows (the
    full stop dropped).

    Args:
        error: any exception.

    Returns:
        That text, or the exception type's name (e.g. "KeyError") when the
        message is empty.
    """
    lines = str(error).strip().splitlines()
    if not lines:
        return type(error).__name__
    first, _, rest = lines[0].partition(". ")
    return first if rest else lines[0]


_SYSTEM_REASONS = ("No space left on device", "Read-only file system", "Permission denied",
                   "Disk quota exceeded")


def system_reason(error: Exception) -> str:
    """One line for an error TensorFlow raised for a file-system reason.

    TensorFlow's file writers fail with their own error types, not OSError,
    so launch.py recognises a full disk, a read-only file system, a denied
    permission or an exceeded quota by the system's message text (the C
    library's strerror wording, listed in `_SYSTEM_REASONS`). TensorFlow's
    "{{function_node ...}}" prefix, "[Errno N]" and the ".tempstate<digits>"
    suffix of its temporary files are dropped.

    Args:
        error: any exception.

    Returns:
        "<reason>: <file>" where the line with the reason names a file (a
        token with a "/"), "<reason>" where it names none, or "" when the
        message holds none of the reasons.
    """
    text = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", str(error).strip())
    text = re.sub(r"\[Errno \d+\]\s*", "", text)
    for reason in _SYSTEM_REASONS:
        if reason in text:
            line = next(line for line in text.splitlines() if reason in line)
            before, _, after = line.partition(reason)
            # The file is the token with a "/" nearest the reason: TensorFlow
            # writes "<file>; <reason>", Python "<reason>: '<file>'".
            paths = ([t for t in reversed(before.split("; ")) if "/" in t][:1]
                     or [t for t in after.split() if "/" in t][:1])
            where = paths[0].rsplit(": ", 1)[-1].strip().strip(":;,'\"") if paths else ""
            where = re.sub(r"\.tempstate\d+$", "", where)
            return f"{reason}: {where}" if where else reason
    return ""
