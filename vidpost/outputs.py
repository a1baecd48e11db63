"""Outputs that are complete or absent, and one run per output folder.

Every writer of a model folder, LoRA, quantised or student folder, checkpoint, stage record or report goes through
this module:

- `atomic_dir(path)` yields a fresh sibling folder `<path>.tmp` to write into; when the block ends without an error
  every file under it is fsynced, a previous `path` is moved aside (`<path>.old`), the new folder is renamed into
  place, the old one removed and the parent fsynced. A process killed at any moment leaves either the previous
  complete output (at `path`, or at `<path>.old` when the kill fell between the two renames: the next
  `atomic_dir` or `recover(path)` puts it back) or no output, never a half-written folder under the final name.
  An error inside the block removes `<path>.tmp` and re-raises. A folder inside an output being written (e.g.
  `adapter.save_pretrained(tmp)` inside `atomic_dir(final)`) is written in place: the outer output is published as
  one.
- `atomic_file(path)` is the same for one file (a hidden sibling `.<stem>.<pid>.tmp<suffix>` that keeps the
  suffix writers read the format from, fsync, `os.replace`); `write_text` / `write_json` use it.
- A full disk while writing is `OutOfSpace` (a `ValueError`: the command prints one line and exits 2): it names the
  filesystem, what was being written, roughly how much it needs, and what is still intact; the `.tmp` is removed.
- `OutputLock(folder)` is the lock file `<folder>/.vidpost.lock` (process id, host, command): a second run on the same
  folder refuses with one line while the first lives; a lock left by a dead process on this host is taken over with
  a warning.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

TMP_SUFFIX = ".tmp"
OLD_SUFFIX = ".old"
LOCK_FILE = ".vidpost.lock"


class OutOfSpace(ValueError):
    """The disk filled up while an output was written; the partial output was removed."""


class OutputBusy(ValueError):
    """Another live run holds the output folder's lock."""


def fsync(path: Path) -> None:
    """fsync a file, or a folder's entries."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(path: Path) -> None:
    """fsync every file under `path`, then each folder (deepest first); a single file is fsynced alone."""
    path = Path(path)
    if path.is_file():
        fsync(path)
        return
    folders = []
    for root, _dirs, files in os.walk(path):
        folders.append(root)
        for name in files:
            fsync(Path(root) / name)
    for root in reversed(folders):
        fsync(Path(root))


def tree_bytes(path: Path) -> int:
    """Bytes of the files under `path` (0 when it does not exist)."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else 0


def _mb(n: float) -> str:
    return f"{n / 1e6:.1f} MB" if n < 1e9 else f"{n / 1e9:.2f} GB"


def is_disk_full(error: BaseException, where: Path) -> bool:
    """Whether `error` (raised while writing under `where`) is a full disk: ENOSPC, or a library's wrapping of it
    (torch's zip writer and safetensors report it in their own words), or a filesystem with (almost) no space left."""
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(error)
    if any(s in text for s in ("No space left", "StorageFull", "os error 28", "Disk quota exceeded")):
        return True
    try:
        return shutil.disk_usage(_existing(where)).free < 1 << 20
    except OSError:
        return False


def _existing(path: Path) -> Path:
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def out_of_space(where: Path, what: str, need: int, intact: str | None = None) -> OutOfSpace:
    """The one-line error of a full disk while writing `what` at `where` (`need` bytes, roughly)."""
    try:
        free = f", {_mb(shutil.disk_usage(_existing(where)).free)} free"
    except OSError:
        free = ""
    message = f"no space left on {_existing(where.parent)} while writing {what} (need ~{_mb(need)}{free})"
    return OutOfSpace(message + (f"; {intact}" if intact else "; nothing was written"))


def recover(path: Path) -> None:
    """Put back an output whose replacement was interrupted between its two renames (`<path>.old` with no `path`);
    remove a leftover `<path>.tmp`."""
    path = Path(path)
    old, tmp = _sibling(path, OLD_SUFFIX), _sibling(path, TMP_SUFFIX)
    if old.exists():
        if path.exists():
            _remove(old)
        else:
            os.replace(old, path)
    if tmp.exists():
        _remove(tmp)


def _sibling(path: Path, suffix: str) -> Path:
    return path.with_name(path.name + suffix)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


@contextlib.contextmanager
def atomic_dir(
    path: str | os.PathLike, what: str | None = None, intact: str | None = None, need: int | None = None
) -> Iterator[Path]:
    """Write the folder `path` complete or not at all: yields `<path>.tmp` (empty) to write into; see the module
    docstring. For a full-disk error: `what` names the output (default: the folder), `intact` what is still there
    (default: the previous `path`, when there is one), `need` its size in bytes when the writer knows it (default:
    the previous output's size, or what was written before the disk filled up)."""
    path = Path(path)
    if _inside_active(path):
        path.mkdir(parents=True, exist_ok=True)
        yield path
        return
    recover(path)
    tmp = _sibling(path, TMP_SUFFIX)
    tmp.mkdir(parents=True)
    _ACTIVE.add(tmp.absolute())
    try:
        yield tmp
        fsync_tree(tmp)  # the files are on disk before the folder takes its final name
    except BaseException as e:
        _ACTIVE.discard(tmp.absolute())
        written = tree_bytes(tmp)
        full = isinstance(e, Exception) and is_disk_full(e, tmp)
        _remove(tmp)
        if full:
            need = need or max(written, tree_bytes(path))
            if intact is None and path.exists():
                intact = f"the previous {path} is intact"
            raise out_of_space(path, what or str(path), need, intact) from None
        raise
    _ACTIVE.discard(tmp.absolute())
    _publish(tmp, path)


_ACTIVE: set[Path] = set()
"""the `<path>.tmp` folders being written by this process (`atomic_dir`)"""


def _inside_active(path: Path) -> bool:
    path = path.absolute()
    return any(path == t or t in path.parents for t in _ACTIVE)


def _publish(tmp: Path, path: Path) -> None:
    """Rename `tmp` to `path`, replacing a previous `path` (moved to `<path>.old` first, then removed)."""
    old = _sibling(path, OLD_SUFFIX)
    if path.exists():
        _remove(old)
        os.replace(path, old)
    os.replace(tmp, path)
    fsync(path.parent)
    _remove(old)


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, what: str | None = None) -> Iterator[Path]:
    """Write the file `path` complete or not at all: yields a temporary sibling to write (its suffix is `path`'s);
    then fsync and `os.replace`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if _inside_active(path):
        yield path
        return
    tmp = path.with_name(f".{path.stem}.{os.getpid()}{TMP_SUFFIX}{path.suffix}")
    try:
        yield tmp
        fsync(tmp)
    except BaseException as e:
        written = tree_bytes(tmp)
        full = isinstance(e, Exception) and is_disk_full(e, path.parent)
        _remove(tmp)
        if full:
            raise out_of_space(path, what or str(path), max(written, tree_bytes(path)), None) from None
        raise
    os.replace(tmp, path)


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """`path.write_bytes(data)`, complete or absent."""
    with atomic_file(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def save_figure(fig: Any, path: str | os.PathLike, **savefig: Any) -> Path:
    """Lay out a matplotlib figure, write it to `path` (complete or absent; the format from the suffix) and close
    it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, **savefig)
    plt.close(fig)
    return Path(path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    """`path.write_text(text)`, complete or absent."""
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json(path: str | os.PathLike, data: Any, indent: int | None = 2, **kw: Any) -> Path:
    """`data` as JSON (a trailing newline), complete or absent."""
    return write_text(path, json.dumps(data, indent=indent, **kw) + "\n")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_main_process() -> bool:
    """Whether this process writes a run's outputs: the only one, or rank 0 of a launched group (torchrun and
    accelerate set RANK)."""
    return int(os.environ.get("RANK", "0")) == 0


class OutputLock:
    """`<folder>/.vidpost.lock` while a run writes `folder` (see the module docstring). Re-entrant in one process (the
    staged run's stages write below its own folder). Only the main process takes it (`is_main_process`)."""

    _held: dict[Path, int] = {}

    def __init__(self, folder: str | os.PathLike, what: str = "run") -> None:
        self.folder = Path(folder).absolute()
        self.file = self.folder / LOCK_FILE
        self.what = what
        self.taken = False

    def __enter__(self) -> OutputLock:
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()

    def acquire(self) -> None:
        if not is_main_process():
            return
        if self._held.get(self.folder):
            self._held[self.folder] += 1
            self.taken = True
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        record = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "command": " ".join(sys.argv),
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        for _ in range(2):
            try:
                fd = os.open(self.file, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._take_over_or_refuse()
                continue
            with os.fdopen(fd, "w") as f:
                f.write(json.dumps(record) + "\n")
            self._held[self.folder] = 1
            self.taken = True
            return
        raise OutputBusy(f"could not take the lock {self.file}")

    def _take_over_or_refuse(self) -> None:
        try:
            held = json.loads(self.file.read_text())
            pid, host = int(held["pid"]), str(held["host"])
        except (OSError, ValueError, KeyError, TypeError):
            held, pid, host = {}, -1, socket.gethostname()  # an unreadable lock (a kill while writing it) is stale
        if host == socket.gethostname() and (pid <= 0 or not _alive(pid)):
            print(f"warning: taking over the stale lock of {self.folder} (process {pid} is gone)", file=sys.stderr)
            _remove(self.file)
            return
        since = f", started {held['started']}" if held.get("started") else ""
        where = f"on {host}" if host != socket.gethostname() else "on this host"
        raise OutputBusy(
            f"{self.folder} is in use by another {self.what} (process {pid} {where}{since}); wait for it to finish or "
            f"give another output_dir (if that run is gone, delete {self.file})"
        )

    def release(self) -> None:
        if not self.taken:
            return
        self.taken = False
        self._held[self.folder] -= 1
        if self._held[self.folder] == 0:
            del self._held[self.folder]
            _remove(self.file)
