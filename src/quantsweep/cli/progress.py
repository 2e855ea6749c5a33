"""tqdm progress bars for the CLI (library code only sees a callback)."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

from tqdm import tqdm

from quantsweep.sensitivity.runner import ProgressFn


@contextlib.contextmanager
def tqdm_progress(total: int, label: str) -> Iterator[ProgressFn]:
    """A bar of ``total`` steps; each call advances it and shows the message."""
    with tqdm(total=total, desc=label, unit="step", file=sys.stderr, dynamic_ncols=True) as bar:

        def step(message: str) -> None:
            bar.set_postfix_str(message[-60:], refresh=False)
            bar.update(1)

        yield step
