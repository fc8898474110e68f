"""One run per output folder: a lock file that names its holder, held for the run and released when the
process ends, however it ends (an advisory `flock`: the kernel drops it with the process, so a killed run
leaves no stale lock). Where `fcntl` is missing (Windows) folders are not locked."""

from __future__ import annotations

import os
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from circuitdyn.core.outputs import ArtifactError

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None  # type: ignore[assignment]

LOCK_FILE = ".circuitdyn.lock"


class FolderInUseError(ArtifactError):
    """An output folder that another run is writing to; the message names that run."""


@contextmanager
def claim_folder(folder: Path, what: str) -> Iterator[None]:
    """Hold `folder` (created if needed) for one `what` ("training run", "study") until the block ends;
    refuse it, naming the holder, while another process or another run in this process holds it."""
    folder.mkdir(parents=True, exist_ok=True)
    if fcntl is None:
        yield
        return
    fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "another run"
            raise FolderInUseError(f"{folder} is in use: {holder}. Two runs in one folder would mix their files; "
                                   "wait for it to end, or write to another folder") from None
        os.ftruncate(fd, 0)
        command = " ".join(sys.argv)[:200]
        os.pwrite(fd, (f"a {what} of process {os.getpid()} on {socket.gethostname()}, started "
                       f"{time.strftime('%Y-%m-%d %H:%M:%S')} ({command})\n").encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock
