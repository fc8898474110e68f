"""Atomic writes: build a file or folder under a temporary name beside its target, then rename it into
place, so an interrupted write leaves the previous version intact and never a partial one.

The temporary names come from mkstemp / mkdtemp, which create them private (0600 / 0700); before the
rename they get the modes a plain `open` / `mkdir` would have given under the process's umask, so
colleagues on a shared machine can read results where the umask lets them."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


def current_umask() -> int:
    """The process's umask (read without changing it where /proc tells it)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _publish_modes(root: Path) -> None:
    """Give a finished temporary file or folder tree the umask's modes (files 0666 & ~umask, folders 0777)."""
    mask = current_umask()
    file_mode, dir_mode = 0o666 & ~mask, 0o777 & ~mask
    if root.is_dir():
        for folder, dirs, files in os.walk(root):
            for name in files:
                os.chmod(os.path.join(folder, name), file_mode)
            for name in dirs:
                os.chmod(os.path.join(folder, name), dir_mode)
        os.chmod(root, dir_mode)
    else:
        os.chmod(root, file_mode)


def previous_of(folder: Path) -> Path:
    """Where `atomic_folder` keeps the version it is replacing while it publishes the new one."""
    return folder.with_name(folder.name + ".previous")


def recover_folder(folder: Path) -> Path:
    """Finish or undo a publish that was interrupted (killed, power lost), so `folder` is one complete copy:
    the previous version when the new one never reached its place, the new one when it did. Returns
    `folder`. Every reader of a published folder calls it first; it does nothing when no publish was cut."""
    folder = Path(folder)
    previous = previous_of(folder)
    if previous.is_dir():
        if folder.exists():  # the new version is in place: the old one was about to be removed
            shutil.rmtree(previous, ignore_errors=True)
        else:  # cut between moving the old one aside and moving the new one in: put the old one back
            os.replace(previous, folder)
    return folder


@contextlib.contextmanager
def atomic_folder(folder: Path) -> Iterator[Path]:
    """Yields a temporary folder; on success it replaces `folder`, on error it is removed.

    Publishing never leaves a moment without one complete copy: the old version is renamed aside
    (`NAME.previous`), the new one renamed into place, and only then is the old one removed. A process
    killed between the two renames leaves the old version aside, which `recover_folder` puts back."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    recover_folder(folder)
    tmp = Path(tempfile.mkdtemp(prefix=folder.name + ".", suffix=".tmp", dir=folder.parent))
    try:
        yield tmp
        _publish_modes(tmp)
        previous = previous_of(folder)
        if folder.exists():
            os.replace(folder, previous)
        os.replace(tmp, folder)
        if previous.exists():
            shutil.rmtree(previous)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def atomic_file(path: Path) -> Iterator[Path]:
    """Yields a temporary path to write; on success it replaces `path`, on error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        _publish_modes(Path(tmp))
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def atomic_write_text(path: Path, text: str) -> None:
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
