"""Output folders of ``recon ct`` and ``recon mri``: checked, locked while written, cleaned of stale images.

``--output`` must be a folder (a file of that name is a usage error). ``<output>/.lock`` is held
(``fcntl.flock``, exclusive, non-blocking) from the moment a run claims the folder until it ends, so
a second run on the same folder is refused instead of mixing its files with the first's; the OS
releases the lock when a process dies, and the empty ``.lock`` file stays (removing it would let two
runs lock two different files). After writing, ``<method>.png`` images of the command's known methods
that this run did not produce are removed, so the images match ``metrics.json``; other files stay.
``metrics.json`` is strict JSON: non-finite numbers are written as the strings ``"inf"``/``"nan"``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from data.hdf5 import atomic_path
from data.provenance import json_safe

__all__ = ["LOCK", "check_output", "hold_lock", "locked_output", "remove_stale_images", "write_metrics"]

LOCK = ".lock"


def check_output(out: Path) -> None:
    """``ValueError`` (a usage error) when ``--output`` names something other than a folder."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--output: expected a folder, found a file {out} (choose a folder name)")


@contextmanager
def hold_lock(folder: Path, busy: str, error: type[Exception] = ValueError) -> Iterator[None]:
    """Hold ``folder/.lock`` (exclusive, non-blocking; the OS releases it if the process dies) while the
    block runs; ``error(busy)`` when another process holds it. Shared by ``recon ct``, ``mri`` and ``batch``."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX: no lock
        yield
        return
    with open(folder / LOCK, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise error(busy) from None
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@contextmanager
def locked_output(out: Path) -> Iterator[Path]:
    """Create ``out`` and hold ``out/.lock`` while the block runs; ``ValueError`` if another run holds it.

    ``OSError`` (a read-only parent, a full disk) propagates: ``recon`` reports it as a run failure.
    """
    check_output(out)
    out.mkdir(parents=True, exist_ok=True)
    with hold_lock(out, f"--output: another run holds {out} (its {LOCK} is locked); wait for it to end or choose "
                        "another folder"):
        yield out


def remove_stale_images(out: Path, known: Iterable[str], produced: Iterable[str]) -> list[Path]:
    """Delete ``out/<name>.png`` for each known method name not in ``produced``; return what was removed.

    Example:
        >>> import tempfile
        >>> out = Path(tempfile.mkdtemp())
        >>> for name in ("fbp", "tv", "notes"):
        ...     _ = (out / f"{name}.png").write_bytes(b"")
        >>> [p.name for p in remove_stale_images(out, ("fbp", "tv", "sirt"), ["fbp"])]
        ['tv.png']
        >>> sorted(p.name for p in out.iterdir())
        ['fbp.png', 'notes.png']
    """
    produced = set(produced)
    stale = [out / f"{name}.png" for name in dict.fromkeys(known) if name not in produced]
    removed = [path for path in stale if path.is_file() and not path.is_symlink()]
    for path in removed:
        path.unlink()
    return removed


def write_metrics(path: Path, metrics: dict) -> None:
    """``metrics`` as strict JSON (``allow_nan=False``; non-finite numbers as strings), atomically."""
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        json.dump(json_safe(metrics), f, indent=2, allow_nan=False)
