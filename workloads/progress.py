"""Progress of long work: a live tqdm line on a terminal, logging lines otherwise.

Long steps (deriving a default workload, fitting or sampling a routing process, a hold-out
evaluation) run inside `stage`: on a terminal (stderr is a TTY) it shows ``desc: <elapsed>``
refreshed every second and leaves the final elapsed time; elsewhere (CI logs, pipes) it logs
``desc ...`` when the step starts and ``desc: done in X s`` when it ends, at INFO level on the
``moe_codesign.progress`` logger. The ``codesign`` command line shows that logger's INFO lines on
stderr by default; a library user sees them after ``logging.basicConfig(level=logging.INFO)``.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO

from tqdm import tqdm

#: Name of the logger that carries progress lines.
PROGRESS_LOGGER = "moe_codesign.progress"

log = logging.getLogger(PROGRESS_LOGGER)


def _is_tty(stream: TextIO) -> bool:
    """A terminal with a width (a pseudo-terminal of width 0 would show an empty bar: log instead)."""
    isatty = getattr(stream, "isatty", None)
    try:
        if not (isatty and isatty()):
            return False
        return os.get_terminal_size(stream.fileno()).columns > 0
    except (ValueError, OSError, AttributeError):  # a closed or unusual stream
        return False


@contextmanager
def stage(desc: str, *, tty: bool | None = None, refresh_s: float = 1.0) -> Iterator[None]:
    """Run the body as one long step described by ``desc`` (shown as it starts, with its elapsed
    time, in seconds, when it ends).

    ``tty`` forces the terminal form (True) or the logging form (False); None decides by whether
    ``sys.stderr`` is a terminal. An exception in the body ends the step with ``failed after X s``
    (logging form) and propagates.
    """
    stream = sys.stderr
    on_tty = _is_tty(stream) if tty is None else tty
    start = time.monotonic()
    if not on_tty:
        log.info("%s ...", desc)
        try:
            yield
        except BaseException:
            log.info("%s: failed after %.1f s", desc, time.monotonic() - start)
            raise
        log.info("%s: done in %.1f s", desc, time.monotonic() - start)
        return
    bar = tqdm(total=None, desc=desc, bar_format="{desc}: {elapsed}", file=stream, leave=True)
    stop = threading.Event()

    def tick() -> None:
        while not stop.wait(refresh_s):
            bar.refresh()

    ticker = threading.Thread(target=tick, name="progress-stage", daemon=True)
    ticker.start()
    try:
        yield
    finally:
        stop.set()
        ticker.join()
        bar.close()


__all__ = ["PROGRESS_LOGGER", "stage"]
