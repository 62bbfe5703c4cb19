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
