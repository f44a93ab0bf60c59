"""Atomic file writes: a crash or a full disk never leaves a half-written file in place of a good one.

A write goes to ``.NAME.vrtk-PID-XXXXXXXX.tmp`` beside the target and is renamed over it when complete; with
``overwrite=False`` it is hard-linked instead, which fails if the target appeared meanwhile (two writers racing
for one output: exactly one wins). A process killed mid-write leaves its temporary behind; the next write into
that folder removes temporaries of this pattern whose process is gone.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from vrtk.errors import VrtkError

_TEMP = re.compile(r"\..+\.vrtk-(\d+)-[a-z0-9_]{8}\.tmp")
STALE_AFTER_S = 60.0  # a temporary untouched this long whose process is gone is debris, not a write in progress
_swept: set[Path] = set()  # folders already cleaned by this process


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary path next to ``target``; on success move it to ``target`` (fsync'd). ``overwrite=False``
    creates ``target`` exclusively: if it exists by then (another process wrote it), nothing is replaced and a
    VrtkError says so."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(target.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.vrtk-{os.getpid()}-", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp makes 0600 (and some writers replace the file): the result gets the usual permissions
        os.chmod(tmp_path, 0o666 & ~_umask())
        with open(tmp_path, "rb") as fh:
            os.fsync(fh.fileno())
        if overwrite:
            os.replace(tmp_path, target)
        else:
            _create_exclusively(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _create_exclusively(tmp: Path, target: Path) -> None:
    """Move ``tmp`` to ``target`` only if ``target`` does not exist; atomic where hard links work."""
    try:
        os.link(tmp, target)  # fails with EEXIST if another writer got there first
        return
    except FileExistsError:
        raise VrtkError(f"output exists: {target} (written by another process meanwhile; use --force to "
                        "replace)") from None
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EXDEV, errno.EMLINK):
            raise
    try:  # a filesystem without hard links: claim the name first, then fill it
        os.close(os.open(target, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
    except FileExistsError:
        raise VrtkError(f"output exists: {target} (written by another process meanwhile; use --force to "
                        "replace)") from None
    os.replace(tmp, target)


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Remove our own temporaries in ``folder`` left by killed processes (once per folder and process)."""
    folder = Path(folder)
    key = folder.resolve()
    if key in _swept:
        return []
    _swept.add(key)
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return []
    now = time.time()
    for entry in entries:
        match = _TEMP.fullmatch(entry.name)
        try:
            if (match and entry.is_file(follow_symlinks=False) and not _alive(int(match.group(1)))
                    and now - entry.stat(follow_symlinks=False).st_mtime > STALE_AFTER_S):
                os.unlink(entry.path)
                removed.append(Path(entry.path))
        except OSError:  # gone already, or not ours to remove
            continue
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True  # exists under another user (or an absurd number: leave the file alone)
    return True


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_bytes_atomic(target: str | os.PathLike, data: bytes, overwrite: bool = True) -> None:
    with atomic_path(target, overwrite) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(target: str | os.PathLike, text: str) -> None:
    write_bytes_atomic(target, text.encode("utf-8"))


def write_json_atomic(target: str | os.PathLike, obj) -> None:
    write_text_atomic(target, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def write_with_atomic(target: str | os.PathLike, writer: Callable[[Path], None]) -> None:
    """Call ``writer(tmp_path)`` and move the result over ``target`` only if it returned normally."""
    with atomic_path(target) as tmp:
        writer(tmp)


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
