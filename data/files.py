"""Writing output files so that a reader never sees half of one: ``atomic_path``.

The file is written under a temporary name in the target's folder and renamed over the target
only when the writer succeeds. Its permissions are those a plain ``open(path, "w")`` would give,
``0o666`` less the process's umask, not the ``0o600`` of ``tempfile.mkstemp``: outputs are meant to
be read by colleagues and services.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

__all__ = ["atomic_path", "current_umask", "readable"]


def current_umask() -> int:
    """The process's umask, read without changing it where ``/proc`` tells it (Linux), else by
    setting and restoring it.

    Example:
        >>> 0 <= current_umask() <= 0o777
        True
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def readable(path, directory: bool = False) -> None:
    """Give ``path`` the mode a plain ``open`` (``0o666``) or ``mkdir`` (``0o777``) would, less the umask."""
    os.chmod(path, (0o777 if directory else 0o666) & ~current_umask())


class atomic_path:
    """Context manager yielding a temporary path in the target's folder, renamed on success.

    Example:
        >>> import tempfile, os
        >>> target = os.path.join(tempfile.mkdtemp(), "out.txt")
        >>> with atomic_path(target) as tmp, open(tmp, "w") as f: _ = f.write("done")
        >>> open(target).read()
        'done'
    """

    def __init__(self, path) -> None:
        self.path = Path(path)

    def __enter__(self) -> str:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, self.tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp")
        os.close(fd)
        readable(self.tmp)  # writers that truncate the file keep its mode
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            readable(self.tmp)  # again: some writers (safetensors) replace the file with a 0o600 one
            os.replace(self.tmp, self.path)
        elif os.path.exists(self.tmp):
            os.unlink(self.tmp)
