"""One writer at a time: an exclusive lock file that names its owner (pid, host, start time).

`WriterLock(path).acquire()` creates `path` if needed, takes an exclusive, non-blocking `flock` on it
and writes `{"pid", "host", "since"}` into it; `release()` deletes it. The kernel drops a `flock`
when its owner dies, so a lock file left behind by a killed writer is stale: the next writer takes
it over, with a `StaleLockWarning` naming the dead owner. While the owner lives, `acquire()` raises
`LockedError` naming the lock file and its owner. Within one process a second `acquire()` of the
same file is refused too.

Where the file system has no `flock` (some network mounts), the recorded owner decides instead: a
lock of a pid that no longer runs on this host is stale; a lock of another host is refused (delete
the file once that writer is known to be gone).
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import time
import warnings
from pathlib import Path
from typing import Any

_HELD: set[str] = set()  # real paths of the lock files this process holds


class LockedError(FileExistsError):
    """Another writer holds the lock."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class StaleLockWarning(UserWarning):
    """A lock file of a writer that no longer runs was taken over."""


def _pid_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def describe_owner(owner: dict[str, Any] | None) -> str:
    if not owner:
        return "an unknown owner (the lock file is empty or unreadable)"
    return f"pid {owner.get('pid')} on host {owner.get('host')!r} since {owner.get('since')}"


def _read_owner(fd: int) -> dict[str, Any] | None:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        raw = os.read(fd, 4096)
        owner = json.loads(raw.decode()) if raw.strip() else None
    except (OSError, ValueError):
        return None
    return owner if isinstance(owner, dict) else None


class WriterLock:
    """An exclusive lock file at `path` (see the module docstring)."""

    def __init__(self, path: str | os.PathLike, what: str = ""):
        self.path = Path(path)
        self.what = what or str(self.path)
        self._fd: int | None = None
        self._key = os.path.realpath(self.path)

    @property
    def held(self) -> bool:
        return self._fd is not None

    def _refuse(self, owner: dict[str, Any] | None) -> LockedError:
        return LockedError(
            f"{self.what}: another writer holds it (lock file {self.path}: {describe_owner(owner)}); "
            f"wait for that writer to finish or write elsewhere (if it is known to be gone, delete {self.path})")

    def acquire(self) -> "WriterLock":
        if self._fd is not None:
            return self
        if self._key in _HELD:
            raise LockedError(f"{self.what}: already open for writing in this process (pid {os.getpid()}, "
                              f"lock file {self.path}); close that writer first")
        for _ in range(20):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as e:
                raise type(e)(e.errno, f"{self.what}: cannot create the lock file ({e.strerror})", str(self.path)) from None
            flock_works = True
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                owner = _read_owner(fd)
                os.close(fd)
                raise self._refuse(owner) from None
            except OSError as e:
                if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                    os.close(fd)
                    raise
                flock_works = False
            # the previous owner may have deleted the file between our open and our flock: then we hold
            # a lock on a file nobody else will open; start again on the file now at `path`
            try:
                st, fst = os.stat(self.path), os.fstat(fd)
                same = (st.st_ino, st.st_dev) == (fst.st_ino, fst.st_dev)
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            owner = _read_owner(fd)
            if owner:
                host, pid = owner.get("host"), owner.get("pid")
                if not flock_works and (host != socket.gethostname() or not isinstance(pid, int) or _pid_running(pid)):
                    os.close(fd)
                    raise self._refuse(owner)
                warnings.warn(StaleLockWarning(
                    f"{self.what}: taking over the stale lock file {self.path} of {describe_owner(owner)}, "
                    f"which no longer holds it (killed?)"), stacklevel=3)
            me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
            os.write(fd, (json.dumps(me) + "\n").encode())
            os.fsync(fd)
            self._fd = fd
            _HELD.add(self._key)
            return self
        raise self._refuse(None)

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            st, fst = os.stat(self.path), os.fstat(fd)
            if (st.st_ino, st.st_dev) == (fst.st_ino, fst.st_dev):
                os.unlink(self.path)
        except OSError:
            pass
        finally:
            os.close(fd)
            _HELD.discard(self._key)

    def __enter__(self) -> "WriterLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    def __del__(self) -> None:
        try:
            self.release()
        except Exception:
            pass
