"""Atomic file writes: a reader (or a concurrent run) never sees a half-written file.

Each write goes to a hidden temporary file in the destination folder and is then renamed over
the destination with ``os.replace``, which is atomic on POSIX file systems. A run killed mid-write
leaves at most a hidden ``.*.tmp`` file, never a truncated derivative.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path


def _file_mode() -> int:
    """The mode a plain ``open()`` would give, so outputs stay readable by the group as usual."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextmanager
def _temporary_beside(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.chmod(tmp, _file_mode())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    path = Path(path)
    with _temporary_beside(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    return path


def write_text(path: str | os.PathLike, text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj) -> Path:
    return write_text(path, json.dumps(obj, indent=2, sort_keys=False, allow_nan=False) + "\n")


def copy_file(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    dst = Path(dst)
    with _temporary_beside(dst) as tmp:
        shutil.copyfile(src, tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
    return dst
