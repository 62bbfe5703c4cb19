"""The exception types for what a user should read as one line."""


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
    """The first sentence of an error's message (TensorFlow's run to many
    lines), or its type's name."""
    lines = str(error).strip().splitlines()
    if not lines:
        return type(error).__name__
    first, _, rest = lines[0].partition(". ")
    return first if rest else lines[0]
