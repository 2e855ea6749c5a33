"""An unexpected failure ends in one line on the terminal; its traceback goes to the run's log."""

from __future__ import annotations

import os
import tempfile
import traceback
from pathlib import Path

from quantsweep.core.runs import latest_run_log


def write_traceback() -> Path:
    """Append the current exception's traceback to the latest run's log (a temp file before any run)."""
    log = latest_run_log()
    if log is None:
        handle, name = tempfile.mkstemp(prefix="quantsweep-", suffix=".log")
        os.close(handle)
        log = Path(name)
    with log.open("a") as stream:
        stream.write(traceback.format_exc())
    return log


def failure_line(command: str, exc: BaseException) -> str:
    """``quantsweep: error: <command> failed: <Type>: <first line> (traceback in <log>)``; the message
    of the failures we raise names the layer or node."""
    log = write_traceback()
    text = str(exc).strip()
    first = text.splitlines()[0] if text else ""
    return f"quantsweep: error: {command} failed: {type(exc).__name__}: {first} (traceback in {log})"
