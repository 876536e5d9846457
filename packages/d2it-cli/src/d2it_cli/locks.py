"""One writer per folder: an advisory `fcntl.flock` on FOLDER/.d2it.lock that records the holder's PID and host.

The kernel drops a flock when its process dies, so a lock left by a killed run is simply taken
over by the next one (the file's PID/host line is then rewritten). A second live writer gets a
D2itError naming the holder.
"""

import errno
import fcntl
import os
import socket
from pathlib import Path

from d2it.errors import D2itError

LOCK_NAME = ".d2it.lock"


class FolderBusyError(D2itError):
    """Another live process holds the folder's lock."""


def is_main_process() -> bool:
    """Rank 0 (or no torchrun): the process that takes the locks."""
    return int(os.environ.get("RANK", "0") or 0) == 0


class FolderLock:
    """An exclusive advisory lock on a folder (created if missing), held until `release` or the process ends."""

    def __init__(self, folder, what: str = "folder", shared: bool = False):
        self.folder, self.what, self.shared = Path(folder), what, shared
        self.path = self.folder / LOCK_NAME
        self.fd = None

    def acquire(self) -> "FolderLock":
        """Take the lock (shared: many readers, no writer), or raise FolderBusyError naming the holder."""
        if self.shared and not self.folder.is_dir():
            return self  # nothing to protect: the reader reports the missing folder itself
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if self.shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except OSError as exc:
            holder = os.pread(fd, 200, 0).decode("utf-8", "replace").split()
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            pid, host = (holder + ["?", "?"])[:2]
            raise FolderBusyError(
                f"{self.what} {self.folder} is in use by process {pid} on {host}; "
                "wait for it to finish or stop it (one writer per folder)"
            ) from None
        if not self.shared:  # readers leave the writer's line alone
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
        self.fd = fd
        return self

    def release(self):
        if self.fd is not None:
            os.close(self.fd)  # closing drops the flock
            self.fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()

    def close(self):
        """Alias of `release` (for click's `Context.with_resource`)."""
        self.release()
