"""Atomic file writes, and the claim a run holds on its folder while it writes there.

Atomic writes: a reader (or a crash) sees the old file or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

# write_atomic's temporary files: `.<name>.<mkstemp's 8 random characters>.tmp`.
_TEMP_PREFIX, _TEMP_SUFFIX = ".", ".tmp"
_TEMP_NAME = re.compile(r"\.(?P<name>.+)\.[A-Za-z0-9_]{8}\.tmp")


def write_atomic(path: Path, write: Callable[[IO[bytes]], object]) -> None:
    """Write via `write(file)` to a temp file in the same folder, fsync it, then rename it over
    `path` (rename within one filesystem is atomic)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(
        dir=path.parent, prefix=f"{_TEMP_PREFIX}{path.name}.", suffix=_TEMP_SUFFIX
    )
    try:
        with os.fdopen(fd, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(tmp_name, 0o644)  # mkstemp makes it private; results are for sharing
        os.replace(tmp_name, path)
    except BaseException as exc:
        Path(tmp_name).unlink(missing_ok=True)
        # torch.save reports a failed write (a full disk) as a RuntimeError of its own ("unexpected
        # pos"), the OSError only as its context: raise what went wrong, and where.
        failed_write = _os_error_in(exc)
        if failed_write is not None and failed_write is not exc:
            raise OSError(failed_write.errno, failed_write.strerror, str(path)) from exc
        raise


def _os_error_in(exc: BaseException) -> OSError | None:
    """`exc` if it is an OSError, else the first one it was raised from or while handling."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, OSError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def write_json_atomic(path: Path, data: Any) -> None:
    text = json.dumps(data, indent=2, allow_nan=True) + "\n"
    write_atomic(path, lambda file: file.write(text.encode()))


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Delete what `write_atomic` left in `folder` when its process was killed mid-write (a
    SIGKILL skips its clean-up): only files named like its temporaries, only in `folder`
    itself. Call it only while holding the folder's claim, when no other writer can be there.
    Returns the paths removed."""
    removed = []
    for path in folder.glob(f"{_TEMP_PREFIX}*{_TEMP_SUFFIX}") if folder.is_dir() else ():
        if _TEMP_NAME.fullmatch(path.name) and path.is_file() and not path.is_symlink():
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def os_error_text(error: OSError) -> str:
    """'No space left on device (ENOSPC)': what went wrong, with the errno's name to search."""
    name = errno.errorcode.get(error.errno, "") if error.errno is not None else ""
    reason = error.strerror or str(error)
    return f"{reason} ({name})" if name else reason


# ---------------------------------------------------------------------------------- the claim
CLAIM_FILE = ".gradtrain.lock"
# Locking is not supported on this file system (some FUSE and network mounts).
_NO_LOCKING = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS}
_claimed_here: set[Path] = set()  # folders this process holds (a lock does not exclude itself)


class FolderInUse(Exception):
    """Another live process (or this one) holds the folder's claim; `holder` says who."""

    def __init__(self, folder: Path, holder: str) -> None:
        super().__init__(f"{folder} is in use by {holder}")
        self.folder = folder
        self.holder = holder


class NoLocking(Exception):
    """The file system cannot lock: the claim could not be taken (nor refused)."""


@contextlib.contextmanager
def claim_folder(folder: Path) -> Iterator[None]:
    """Hold `folder` for this process until the block ends; raise FolderInUse if a live
    process holds it already (creating the folder if needed).

    The claim is an exclusive `fcntl` record lock on `<folder>/.gradtrain.lock`, which holds
    the pid and host for the message the next claimant gets. The kernel drops the lock when
    its process dies, SIGKILL included, so a dead run's claim is simply taken over; and unlike
    `flock`, a record lock is not inherited by forked children (DataLoader workers), which
    may outlive a killed parent by seconds. At the end the file is removed, and a folder the
    claim created is removed again if it is still empty (a run refused right after claiming
    leaves nothing behind). OSError (a read-only folder, a path that is a file) and
    NoLocking propagate.
    """
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    key = folder.resolve()
    if key in _claimed_here:
        raise FolderInUse(folder, f"this process (pid {os.getpid()})")
    path = folder / CLAIM_FILE
    try:
        fd = _lock(path)
    except BaseException:
        _undo_mkdir(folder, created)
        raise
    _claimed_here.add(key)
    try:
        started = time.strftime("%Y-%m-%d %H:%M:%S")
        record = f"pid {os.getpid()} on {socket.gethostname()}, since {started}\n"
        os.ftruncate(fd, 0)
        os.write(fd, record.encode())
        yield
    finally:
        _claimed_here.discard(key)
        path.unlink(missing_ok=True)  # while still locked: see the check above
        os.close(fd)  # releases the lock
        _undo_mkdir(folder, created)


def _lock(path: Path) -> int:
    """An open descriptor of `path` (created if need be), exclusively locked."""
    import fcntl  # POSIX only; imported here so that importing this module works anywhere

    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            os.close(fd)
            if error.errno in (errno.EACCES, errno.EAGAIN):
                raise FolderInUse(path.parent, _holder(path)) from None
            if error.errno in _NO_LOCKING:
                raise NoLocking(os_error_text(error)) from None
            raise
        # The previous holder removes the file as it lets go: if it did so between our open and
        # our lock, we hold a lock on a file no one else will open. Take the one at `path`.
        try:
            same_file = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same_file = False
        if same_file:
            return fd
        os.close(fd)


def _holder(path: Path) -> str:
    try:
        record = path.read_text(errors="replace").strip()
    except OSError:
        record = ""
    return f"another run (gradtrain {record})" if record else "another run"


def _undo_mkdir(folder: Path, created: bool) -> None:
    if created:
        with contextlib.suppress(OSError):
            folder.rmdir()  # only if empty
