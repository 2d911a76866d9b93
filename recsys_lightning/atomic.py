"""Files that are either complete or absent: written beside their target and renamed over it.

A crash, a SIGTERM or a full disk mid-write leaves the previous file (or none) in place, never a
truncated one that a later run would trust. The temporary file sits in the target's own folder, so
the final rename never crosses filesystems (a cross-filesystem move is a copy, which can be cut off).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO, Any


@contextmanager
def atomic_file(path: str | Path, mode: str = "w") -> Iterator[IO[Any]]:
    """Yield a handle on a hidden temporary file beside `path`; on success it becomes `path`.

    On any exception, KeyboardInterrupt and SystemExit included, the temporary file is removed.
    The result gets the permissions a plain `open` would give (0666 less the umask), not mkstemp's 0600.
    """
    path = Path(path)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(descriptor, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, 0o666 & ~_umask())
        os.replace(temporary, path)
    except BaseException:
        with suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
