"""Cheap checks of command-line values, run before any expensive work.

Each check raises `BadInputError` (a ``ValueError``) whose message is one line naming the flag or
file the user typed and what was expected; `codesign.cli.main` prints it as ``error: ...`` with exit
status 1. Nothing here imports torch or reads more than file metadata.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path


class BadInputError(ValueError):
    """A command-line value that cannot work (the message names the flag or file)."""


def output_file(path: str | os.PathLike[str], flag: str, *, suffixes: Sequence[str] = (), what: str = "output") -> Path:
    """``path`` as a file the command can create or overwrite: its folder exists and is writable,
    it is not a folder, and (when ``suffixes`` are given) its suffix is one of them."""
    p = Path(path)
    label = f"{flag} {p}" if flag else str(p)
    if suffixes and p.suffix.lower() not in suffixes:
        raise BadInputError(f"{label}: expected a path ending in {' or '.join(suffixes)} for {what}")
    if p.is_dir():
        raise BadInputError(f"{label}: is a directory; expected a file path for the {what}")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise BadInputError(f"{label}: folder {parent} does not exist; create it first or choose another path")
    if not _can_create_in(parent) or (p.exists() and not os.access(p, os.W_OK)):
        raise BadInputError(f"{label}: cannot write in {parent}; choose a path you can write")
    return p


def _can_create_in(folder: Path) -> bool:
    """Whether a file can be created in ``folder`` (tried for real: permission bits say nothing
    for root, or on read-only and virtual file systems)."""
    try:
        with tempfile.TemporaryFile(dir=folder):
            return True
    except OSError:
        return False


def output_dir(path: str | os.PathLike[str], flag: str) -> Path:
    """``path`` as a folder the command can write into; created now (with its parents) if absent."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise BadInputError(f"{flag} {p}: exists and is not a directory; expected a folder (created if absent)")
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BadInputError(f"{flag} {p}: cannot create the folder ({exc.strerror})") from None
    if not _can_create_in(p):
        raise BadInputError(f"{flag} {p}: cannot write in this folder; choose another")
    return p


def input_path(path: str | os.PathLike[str], flag: str, *, what: str, folder_ok: bool = False) -> Path:
    """``path`` as an existing input file (or folder when ``folder_ok``)."""
    p = Path(path)
    label = f"{flag} {p}" if flag else str(p)
    if not p.exists():
        raise BadInputError(f"{label}: no such {'file or folder' if folder_ok else 'file'}; expected {what}")
    if p.is_dir() and not folder_ok:
        raise BadInputError(f"{label}: is a directory; expected {what}")
    return p


def seed(value: int, flag: str = "--seed") -> int:
    """A random seed: an integer >= 0 (numpy's generators refuse negative ones)."""
    if value < 0:
        raise BadInputError(f"{flag} {value}: expected a non-negative integer seed (0, 1, 2, ...)")
    return value


def int_range(value: int | None, flag: str, *, low: int = 1, high: int | None = None, why: str = "") -> None:
    """``low <= value <= high`` for an optional integer flag (None passes)."""
    if value is None:
        return
    if value < low or (high is not None and value > high):
        bound = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise BadInputError(f"{flag} {value}: expected an integer {bound}{why}")


def float_range(
    value: float | None, flag: str, *, low: float, high: float, low_open: bool = False, high_open: bool = False
) -> None:
    """A finite float in the interval (bounds open where asked); None passes."""
    if value is None:
        return
    ok = (
        math.isfinite(value)
        and (value > low if low_open else value >= low)
        and (value < high if high_open else value <= high)
    )
    if not ok:
        lo, hi = "(" if low_open else "[", ")" if high_open else "]"
        raise BadInputError(f"{flag} {value}: expected a finite number in {lo}{low:g}, {high:g}{hi}")


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask; ``os.cpu_count()`` where unknown)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def threads(value: int | None, flag: str = "--threads") -> None:
    """A thread count of at most the usable CPUs (more would time-share cores and disturb timings)."""
    if value is None:
        return
    n = usable_cpus()
    if value < 1 or value > n:
        raise BadInputError(f"{flag} {value}: expected 1 to {n} (the CPUs this process may use)")


def available_memory_bytes() -> int | None:
    """``MemAvailable`` of ``/proc/meminfo`` in bytes (None where unknown)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def fits_in_memory(n_bytes: float, what: str, flags: str) -> None:
    """Refuse work whose estimated peak memory ``n_bytes`` exceeds the available memory."""
    avail = available_memory_bytes()
    if avail is not None and n_bytes > avail:
        raise BadInputError(
            f"{flags}: {what} needs about {n_bytes / 2**30:.1f} GiB of memory but {avail / 2**30:.1f} GiB "
            "are available; ask for less"
        )


__all__ = [
    "BadInputError",
    "available_memory_bytes",
    "fits_in_memory",
    "float_range",
    "input_path",
    "int_range",
    "output_dir",
    "output_file",
    "seed",
    "threads",
    "usable_cpus",
]
