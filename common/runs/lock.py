"""One process per run or sweep: an exclusive lock on its folder."""

import datetime
import fcntl
import os
import pathlib
import socket

from common.errors import UserError
from common.runs.files import LOCK_FILE, os_error


class Lock:
    """An exclusive lock on a folder (flock on its .lock file, which records
    host and PID). The kernel releases it when its owner exits, however it
    ends, so a dead owner's lock is simply taken over."""

    def __init__(self, folder: pathlib.Path, what: str):
        self.path = pathlib.Path(folder) / LOCK_FILE
        self.what = what
        self._file = None

    def acquire(self) -> "Lock":
        try:
            handle = open(self.path, "a+")
        except OSError as e:
            raise os_error(e, f"lock {self.what}") from None
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            owner = handle.read().strip() or "another process"
            handle.close()
            raise UserError(f"{self.what} {self.path.parent} is in use by {owner}; "
                            "wait for it to finish or stop it") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()} since "
                     f"{datetime.datetime.now().isoformat(timespec='seconds')}\n")
        handle.flush()
        self._file = handle
        return self

    def release(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
