"""Where a genuine bug's traceback goes: a log file, named in one line."""

import datetime
import pathlib
import tempfile
import traceback


def write_log(results_dir: str, experiment: str) -> pathlib.Path:
    """Writes the current exception's traceback to
    <results_dir>/crashes/<time>-<experiment>.log (or the temporary folder
    if that cannot be written); returns the path."""
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    text = traceback.format_exc()
    for folder in (pathlib.Path(results_dir) / "crashes", pathlib.Path(tempfile.gettempdir())):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"{stamp}-{experiment}.log"
            path.write_text(text)
            return path
        except OSError:
            continue
    return pathlib.Path("(unwritable)")
