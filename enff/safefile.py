"""File-system primitives that keep a run file safe: the writer's lock, atomic publication of a new
file, disk space reserved ahead of each write, and recovery of a file deleted while it is written.

Everything here works on plain descriptors and paths; :mod:`enff.runfile` combines them with netCDF.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import shutil
import sys
from pathlib import Path

__all__ = ["LockHeld", "WriterLock", "publish", "remove_stale_temporaries", "temporary_name", "writer_of"]

_FALLOC_FL_KEEP_SIZE = 1  # linux/falloc.h: allocate blocks without changing the file size
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None
_UNSUPPORTED = (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)


class LockHeld(Exception):
    """Another process holds the lock; ``holder`` is its pid when the system says (Linux), else ``None``."""

    def __init__(self, path: Path, holder: int | None) -> None:
        super().__init__(f"{path} is locked by {'process ' + str(holder) if holder else 'another process'}")
        self.path, self.holder = path, holder


class WriterLock:
    """An exclusive ``flock`` on one file's inode, held through an open read-write descriptor.

    The kernel drops the lock when the descriptor closes, also when the process is killed, so a
    SIGKILLed writer never leaves a stale lock. The lock follows the inode through renames.
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd

    @classmethod
    def acquire(cls, path: Path, *, create: bool = False) -> "WriterLock":
        """Lock the file ``path`` (created, and required not to exist, when ``create``); raises
        :class:`LockHeld` when another process holds it."""
        flags = os.O_RDWR | (os.O_CREAT | os.O_EXCL if create else 0)
        fd = os.open(path, flags, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _flock_holder(fd)
            os.close(fd)
            raise LockHeld(path, holder) from None
        return cls(fd)

    def identity(self) -> tuple[int, int]:
        """``(device, inode)`` of the locked file."""
        st = os.fstat(self.fd)
        return st.st_dev, st.st_ino

    def is_at(self, path: Path) -> bool:
        """Whether ``path`` still names the locked file (``False`` once it was deleted or replaced)."""
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return False
        return os.fstat(self.fd).st_nlink > 0 and (st.st_dev, st.st_ino) == self.identity()

    def reserve(self, nbytes: int) -> None:
        """Make sure the next ``nbytes`` appended to the file fit on the disk, before anything is written.

        On Linux the blocks are allocated beyond the end of the file without changing its size
        (``fallocate`` with ``FALLOC_FL_KEEP_SIZE``); elsewhere, or where a file system cannot, the free
        space is compared with ``nbytes``. Raises ``OSError(ENOSPC)`` when they do not fit.
        """
        if _LIBC is not None:
            offset = os.fstat(self.fd).st_size
            if _LIBC.fallocate(self.fd, _FALLOC_FL_KEEP_SIZE, ctypes.c_int64(offset), ctypes.c_int64(nbytes)) == 0:
                return
            err = ctypes.get_errno()
            if err not in _UNSUPPORTED:
                raise OSError(err, os.strerror(err))
        stats = os.fstatvfs(self.fd)
        if stats.f_bavail * stats.f_frsize < nbytes:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def copy_to(self, path: Path) -> bool:
        """Write the locked file's bytes to a new file ``path`` (atomically, never over an existing file);
        returns whether ``path`` now holds them. Recovers a file that was deleted while it was open."""
        tmp = temporary_name(path)
        try:
            with open(os.dup(self.fd), "rb") as source, open(tmp, "xb") as target:
                source.seek(0)
                shutil.copyfileobj(source, target, 1 << 20)
            publish(tmp, path, replace=False)
        except OSError:
            tmp.unlink(missing_ok=True)
            return False
        return True

    def release(self) -> None:
        """Unlock and close the descriptor (idempotent)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def writer_of(path: Path) -> int | None:
    """pid of the process writing (holding the lock on) the file at ``path``, or ``None`` (Linux ``/proc/locks``)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        return _flock_holder(fd)
    finally:
        os.close(fd)


def _flock_holder(fd: int) -> int | None:
    """pid of the process holding a ``flock`` on the file open as ``fd``, read from ``/proc/locks``."""
    st = os.fstat(fd)
    key = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    try:
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return None
    for line in lines:  # "1: FLOCK  ADVISORY  WRITE 4321 fe:00:2146477 0 EOF" (waiters read "1: -> FLOCK ...")
        fields = line.split()
        if len(fields) > 5 and fields[1] == "FLOCK" and fields[5] == key and fields[4].isdigit():
            return int(fields[4])
    return None


def temporary_name(path: Path) -> Path:
    """The hidden name, in ``path``'s folder, under which this process prepares ``path``."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def publish(tmp: Path, path: Path, *, replace: bool) -> None:
    """Give the prepared file ``tmp`` its final name ``path`` in one atomic step.

    Without ``replace`` an existing ``path`` is never touched (``FileExistsError``): a hard link fails
    atomically when the name is taken. File systems without hard links fall back to a check then a rename.
    """
    if replace:
        os.replace(tmp, path)
        return
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise FileExistsError(f"{path} exists; pass --overwrite to replace it or --resume to continue it") from None
    except OSError as err:
        if err.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EXDEV):
            raise
        if path.exists():
            raise FileExistsError(f"{path} exists; pass --overwrite to replace it or --resume to continue it") from None
        os.replace(tmp, path)
        return
    os.unlink(tmp)


def remove_stale_temporaries(path: Path) -> None:
    """Delete what killed processes left while preparing ``path``: temporary files of dead processes that
    nobody holds locked."""
    for tmp in path.parent.glob(f".{path.name}.*.tmp"):
        pid = tmp.name[len(path.name) + 2:-len(".tmp")]
        if not pid.isdigit() or _alive(int(pid)):
            continue
        try:
            lock = WriterLock.acquire(tmp)
        except (LockHeld, OSError):
            continue
        tmp.unlink(missing_ok=True)
        lock.release()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
