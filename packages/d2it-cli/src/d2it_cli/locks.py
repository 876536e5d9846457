"""One writer per folder: an advisory `fcntl.flock` on FOLDER/.d2it.lock that records the holder's PID and host.

The kernel drops a flock when its process dies, so a lock left by a killed run is simply taken
over by the next one (the file's PID/host line is then rewritten). A second live writer gets a
D2itError naming the holder.
"""

import errno
import fcntl
import os
import socket
import stat
from pathlib import Path

from d2it.errors import D2itError

LOCK_NAME = ".d2it.lock"


class FolderBusyError(D2itError):
    """Another live process holds the folder's lock."""


class LockFileError(D2itError):
    """A lock file that is a symbolic link or shares its contents with another file."""


def is_main_process() -> bool:
    """Rank 0 (or no torchrun): the process that takes the locks."""
    return int(os.environ.get("RANK", "0") or 0) == 0


class FolderLock:
    """An exclusive advisory lock on a folder (created if missing), held until `release` or the process ends."""

    def __init__(self, folder, what: str = "folder", shared: bool = False):
        self.folder, self.what, self.shared = Path(folder), what, shared
        self.path = self.folder / LOCK_NAME
        self.fd = None
        self.created = False  # whether acquiring made the lock file
        self.unlocked = None  # a shared lock that could not be taken (read-only folder): why, for one warning line

    def acquire(self) -> "FolderLock":
        """Take the lock (shared: many readers, no writer), or raise FolderBusyError naming the holder.

        The lock file is opened without following a symbolic link and must be a plain file of its own
        (one link), so taking a lock never truncates or writes another file.
        """
        if self.shared and not self.folder.is_dir():
            return self  # nothing to protect: the reader reports the missing folder itself
        if not self.shared:
            self.folder.mkdir(parents=True, exist_ok=True)
        try:
            fd = self._open()
        except OSError as exc:
            if not self.shared or exc.errno not in (errno.EROFS, errno.EACCES, errno.EPERM):
                raise
            try:  # a reader on a read-only mount: an existing lock file still takes a shared flock
                fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
            except OSError:
                self.unlocked = f"{self.folder} is not writable ({os.strerror(exc.errno).lower()})"
                return self  # read without the lock: nothing can write a read-only folder meanwhile either
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
            os.close(fd)
            raise LockFileError(f"the lock file {self.path} is not a plain file of its own; remove it")
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
        try:
            now = os.lstat(self.path)
        except FileNotFoundError:
            now = None
        if now is None or (now.st_ino, now.st_dev) != (info.st_ino, info.st_dev):
            os.close(fd)  # the file was removed or replaced while we opened it: its holder is just leaving
            raise FolderBusyError(f"{self.what} {self.folder} changed hands while locking it; try again")
        if not self.shared:  # readers leave the writer's line alone
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
        self.fd = fd
        return self

    def _open(self) -> int:
        flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
        try:
            fd = os.open(self.path, flags | os.O_EXCL, 0o666)
            self.created = True
            return fd
        except FileExistsError:
            try:
                return os.open(self.path, flags, 0o666)
            except OSError as exc:
                if exc.errno == errno.ELOOP:
                    raise LockFileError(
                        f"the lock file {self.path} is a symbolic link; d2it does not write through links, remove it"
                    ) from None
                raise

    def release(self, remove: bool = False):
        """Drop the lock; `remove` also deletes the lock file when this lock created it."""
        if self.fd is not None:
            if remove and self.created:
                try:
                    os.unlink(self.path)  # while still holding it, so no one locks the file being removed
                except FileNotFoundError:
                    pass
            os.close(self.fd)  # closing drops the flock
            self.fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()

    def close(self):
        """Alias of `release` (for click's `Context.with_resource`)."""
        self.release()
