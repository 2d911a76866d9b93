"""Files that are either complete or absent: written beside their target and renamed over it.

A crash, a SIGTERM or a full disk mid-write leaves the previous file (or none) in place, never a
truncated one that a later run would trust. The temporary file sits in the target's own folder, so
the final rename never crosses filesystems (a cross-filesystem move is a copy, which can be cut off).

A write the system refuses (a full disk, `ulimit -f`, a read-only folder) raises OSError, which a
caller turns into one `WriteFailed` line (`write_failure`) naming the file and what to do.
"""

from __future__ import annotations

import errno
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO, Any

from recsys_lightning.errors import RecsysError, cut

# What a user does about each refusal of the system to write.
_ADVICE = {
    errno.EFBIG: "the file-size limit (ulimit -f) is below its size: raise it (ulimit -f unlimited) and run again",
    errno.ENOSPC: "the disk is full: free space there and run again",
    errno.EDQUOT: "the disk quota is used up: free space there and run again",
    errno.EROFS: "the filesystem is read-only: point the path at a folder you can write",
    errno.EACCES: "permission denied: point the path at a folder you can write",
    errno.EPERM: "the system forbids writing there: point the path at a folder you can write",
    errno.ENOTDIR: "a file stands where a folder must be: point the path at a folder",
    errno.ENOENT: "a folder on its path cannot be created there: point the path at a folder you can write",
}


class WriteFailed(RecsysError):
    """The system refused to write a file or folder; whatever was there before is unchanged."""


def write_failure(path: str | Path, error: OSError, key: str = "", advice: str = "") -> WriteFailed:
    """The one line for `error` writing `path` (`key`: the setting that named it, e.g. hydra.run.dir;
    `advice`: what to do, when the caller knows better than the error's kind)."""
    advice = advice or _ADVICE.get(error.errno or 0, "fix that and run again")
    named = f"{key}={cut(str(path), 200)}" if key else cut(str(path), 200)
    where = f" in {cut(str(error.filename), 200)}" if error.filename and str(error.filename) != str(path) else ""
    return WriteFailed(f"{named}: cannot write{where} ({error.strerror or type(error).__name__}); {advice}")


def check_writable_folder(path: str | Path, key: str = "", advice: str = "") -> None:
    """Prove a file can be made in the folder `path`, or in its nearest existing parent when `path` is
    yet to be created, before work whose result would be lost; nothing is left behind. As root a
    permission bit proves nothing (root writes anyway), so the probe really writes."""
    path = Path(path)
    existing = next(folder for folder in (path, *path.parents) if folder.exists() or folder == folder.parent)
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as error:
        error.filename = str(existing)  # the folder, not the probe's random name
        raise write_failure(path, error, key, advice) from error


def hidden_sibling(path: Path) -> Path:
    """A random hidden name beside `path` for the file or folder that becomes it, named before it is made.

    tempfile's mkstemp and mkdtemp make the file and then return its name: a Ctrl-C or SIGTERM whose
    handler runs in between raises before any caller holds the name, and the file stays behind. Named
    first, it is made inside the block that removes it on any exception. 64 random bits: two names
    that meet are as unlikely as tempfile's own, and the exclusive create refuses one that does.
    """
    return path.parent / f".{path.name}.{secrets.token_hex(8)}.tmp"


def remove_unless_someone_elses(temporary: Path, error: BaseException) -> None:
    """Remove the file or folder `temporary` after `error`, unless the error is that one of that name
    already existed (then it is someone else's)."""
    if isinstance(error, FileExistsError) and error.filename == str(temporary):
        return
    if temporary.is_dir() and not temporary.is_symlink():
        shutil.rmtree(temporary, ignore_errors=True)
    else:
        with suppress(FileNotFoundError):
            os.unlink(temporary)


@contextmanager
def atomic_file(path: str | Path, mode: str = "w") -> Iterator[IO[Any]]:
    """Yield a handle on a hidden temporary file beside `path`; on success it becomes `path`.

    On any exception, KeyboardInterrupt and SystemExit included, the temporary file is removed, even
    one raised as it is made (`hidden_sibling`). The result gets the permissions a plain `open` would
    give (0666 less the umask), not a private temporary file's 0600.
    """
    path = Path(path)
    temporary = hidden_sibling(path)
    try:
        descriptor = os.open(temporary, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        with os.fdopen(descriptor, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, 0o666 & ~_umask())
        os.replace(temporary, path)
    except BaseException as error:
        remove_unless_someone_elses(temporary, error)
        raise


class WriteRecorder:
    """A file-like writer that keeps the OSError its handle raised: torch.save reports a refused write
    as a RuntimeError about zip positions, and the cause (EFBIG, ENOSPC) is only seen here."""

    def __init__(self, handle: IO[bytes]) -> None:
        self.handle = handle
        self.error: OSError | None = None

    def write(self, data: bytes) -> int:
        try:
            return self.handle.write(data)
        except OSError as error:
            self.error = error
            raise

    def flush(self) -> None:
        self.handle.flush()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
