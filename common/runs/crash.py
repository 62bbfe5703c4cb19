"""Where a genuine bug's traceback goes: a log file, named in one line."""

import datetime
import os
import pathlib
import tempfile
import traceback


def write_log(results_dir: str, experiment: str) -> pathlib.Path:
    """Writes the current exception's traceback to a log file.

    The file is a new <results_dir>/crashes/<YYYYmmdd-HHMMSS>-<experiment>-
    <random>.log (created exclusively, readable by its owner only), or the
    same in the system's temporary folder if that cannot be written or
    crashes/ is a symbolic link. Call it while handling the exception (traceback.format_exc()).

    Args:
        results_dir: the results folder (--results_dir).
        experiment: the experiment's name, part of the file's name.

    Returns:
        The path of the log written, or Path("(unwritable)") when neither
        folder can be written.
    """
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    text = traceback.format_exc()
    for folder in (pathlib.Path(results_dir) / "crashes", pathlib.Path(tempfile.gettempdir())):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            if folder.is_symlink():
                continue  # a planted link must not send the log elsewhere
            # A new file of its own (O_EXCL, never through a link).
            fd, path = tempfile.mkstemp(dir=folder, prefix=f"{stamp}-{experiment}-",
                                        suffix=".log")
            with os.fdopen(fd, "w") as f:
                f.write(text)
            return pathlib.Path(path)
        except OSError:
            continue
    return pathlib.Path("(unwritable)")
