"""One process per run or sweep: an exclusive lock on its folder."""

import datetime
import errno
import fcntl
import os
import pathlib
import socket
import stat

from common.errors import UserError
from common.runs.files import LOCK_FILE, os_error


class Lock:
    """An exclusive lock on a folder (flock on its .lock file, which records
    host and PID). The kernel releases it when its owner exits, however it
    ends, so a dead owner's lock is simply taken over.

    Creating a Lock takes nothing; acquire() takes the lock and release()
    gives it back.

    Args:
        folder: the folder to lock; it must exist (its .lock file is created
            in it).
        what: what the folder is ("run", "sweep"), for messages.
    """

    def __init__(self, folder: pathlib.Path, what: str):
        self.path = pathlib.Path(folder) / LOCK_FILE
        self.what = what
        self._file = None

    def acquire(self) -> "Lock":
        """Takes the lock without waiting and records this process in .lock.

        Returns:
            This Lock, now held (so `Lock(folder, "run").acquire()` reads as
            one step).

        Raises:
            UserError: another process holds the lock (the message names the
                owner that .lock records), .lock is a symbolic link or not a
                regular file (it is opened without following links, so a
                planted link cannot make the lock write elsewhere), or it
                cannot be opened.
        """
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK
                         | os.O_CLOEXEC, 0o644)
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise UserError(f"{self.path} is a symbolic link; a lock file must be a "
                                "plain file: remove the link") from None
            raise os_error(e, f"lock {self.what}") from None
        handle = os.fdopen(fd, "r+")
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_nlink > 1:
            handle.close()
            raise UserError(f"{self.path} is not a regular file of its own (a device, a FIFO "
                            "or a hard link to another file); remove it")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = handle.read(200).strip().splitlines()
            handle.close()
            owner = owner[0] if owner and owner[0].isprintable() else "another process"
            raise UserError(f"{self.what} {self.path.parent} is in use by {owner}; "
                            "wait for it to finish or stop it") from None
        except OSError as e:
            handle.close()
            raise os_error(e, f"lock {self.what}") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()} since "
                     f"{datetime.datetime.now().isoformat(timespec='seconds')}\n")
        handle.flush()
        self._file = handle
        return self

    def release(self) -> None:
        """Releases the lock (closes .lock); a no-op if it is not held.

        The .lock file stays, with the last owner's line in it.
        """
        if self._file is not None:
            self._file.close()
            self._file = None
