"""Writes that a later run reads, made safe against kill -9, full disks and leftovers.

Every such file or folder is written under a temporary name beside its final place, then renamed
into place (a rename is atomic within one filesystem): a reader sees the old version or the new
one, never half of one. Temporary names carry the writer's process id, so the next run removes
those whose writer is gone and never those of a run still going. No torch here: the CLI's cheap
checks use this module before the heavy imports.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
from pathlib import Path
from typing import Iterator

from .errors import DreamboothError

_TEMP = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.tmp$")
# errno values that mean "no room": a full disk, a quota, a file-size limit.
_NO_ROOM = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_NO_ROOM_TEXT = ("no space left", "os error 28", "disk quota", "os error 122", "file too large", "os error 27")


def temp_path(path: Path) -> Path:
    """A hidden sibling of `path` owned by this process (never read as an image or checkpoint)."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def remove(path: Path) -> None:
    """Delete a file or folder if it is there."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def discard(path: Path) -> None:
    """Delete a folder a later run would read (an old checkpoint) by renaming it to this process's
    temporary name first: a kill mid-delete leaves a temporary that the next run sweeps away, never a
    half-deleted folder under its real name."""
    path = Path(path)
    tmp = temp_path(path)
    remove(tmp)
    with contextlib.suppress(FileNotFoundError):
        path.rename(tmp)
    remove(tmp)


@contextlib.contextmanager
def exclusive(folder: Path) -> Iterator[None]:
    """Hold an exclusive lock on `folder` (created if missing) while another process of this tool may be
    writing the same one: two suite subjects side by side sharing a cache folder. The lock file is
    released by the OS when its holder dies, so a killed run never leaves it stuck."""
    try:
        import fcntl
    except ImportError:          # no POSIX locks (Windows): one process at a time is the caller's job
        yield
        return
    Path(folder).mkdir(parents=True, exist_ok=True)
    with open(Path(folder) / ".lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path to write a file or a folder to; on success it replaces `path` in one
    rename (a folder: the old one is renamed away first, then deleted). On any failure, Ctrl-C
    included, the temporary is removed and `path` is left as it was."""
    path = Path(path)
    tmp = temp_path(path)
    remove(tmp)
    try:
        yield tmp
        if tmp.is_dir() and path.exists():
            old = path.with_name(f".{path.name}-old.{os.getpid()}.tmp")
            path.rename(old)
            tmp.rename(path)
            remove(old)
        else:
            os.replace(tmp, path)
    except BaseException:
        remove(tmp)
        raise


def write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: Path, data) -> None:
    write_text(path, json.dumps(data, indent=1))


def pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True   # someone else's live process
    return True


def remove_stale_temps(folder: Path) -> list[Path]:
    """Remove the temporaries that killed runs left in `folder` (their process is gone)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    stale = [p for p in folder.iterdir() if (m := _TEMP.match(p.name)) and not pid_alive(int(m["pid"]))]
    for p in stale:
        remove(p)
    return stale


def human_size(n: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def _existing(folder: Path) -> Path:
    folder = Path(folder).absolute()
    while not folder.exists():
        folder = folder.parent
    return folder


def free_bytes(folder: Path) -> int:
    return shutil.disk_usage(_existing(folder)).free


def require_free_space(needs: list[tuple[Path, int, str]]) -> None:
    """needs: (folder, bytes, what). Folders on one filesystem add up. Raises before a heavy write
    that would not fit, naming the folder and the size needed."""
    by_device: dict[int, list[tuple[Path, int, str]]] = {}
    for folder, nbytes, what in needs:
        by_device.setdefault(_existing(folder).stat().st_dev, []).append((Path(folder), nbytes, what))
    for items in by_device.values():
        total = sum(n for _, n, _ in items)
        free = free_bytes(items[0][0])
        # 5% and 16 MB of slack: file headers, configs, the filesystem's own blocks
        if free < total * 1.05 + 16e6:
            listed = ", ".join(f"{what} in {folder} ({human_size(n)})" for folder, n, what in items)
            raise DreamboothError(
                f"Not enough free disk space: this run writes {listed}, about {human_size(total * 1.05 + 16e6)} "
                f"in all, and the disk holding {items[0][0]} has {human_size(free)} free. Free some space there "
                "(old checkpoint-N folders are the usual suspects) or choose a folder on another disk, then run "
                "again; nothing was written yet.")


def is_disk_full(exc: BaseException) -> bool:
    """An OSError with a no-room errno, or a safetensors error carrying one in its text."""
    if isinstance(exc, OSError) and exc.errno in _NO_ROOM:
        return True
    return type(exc).__name__ == "SafetensorError" and any(t in str(exc).lower() for t in _NO_ROOM_TEXT)


@contextlib.contextmanager
def disk_full_is_an_error(folder: Path, what: str, kept: str) -> Iterator[None]:
    """Turn a full disk mid-write into one clear paragraph (the writer has already removed its
    temporaries). `kept`: what is still intact, and how to go on."""
    try:
        yield
    except Exception as exc:
        if not is_disk_full(exc):
            raise
        raise DreamboothError(
            f"The disk holding {folder} filled up while writing {what} ({human_size(free_bytes(folder))} free "
            f"now). Nothing half-written was left behind. {kept} Free some space, then run again.") from None
