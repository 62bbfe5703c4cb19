"""The one exception type for mistakes a user can fix."""


class UserError(Exception):
    """A bad flag, a missing file, absent hardware: reported as one line.

    launch.py prints the message (no traceback) and exits non-zero. The
    message must name the bad value and, where there is a fixed set of valid
    values, list them.
    """
