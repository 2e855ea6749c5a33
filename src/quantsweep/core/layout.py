"""Where each stage's files sit inside a run directory: the one place that knows the layout.

Stages and the report build paths with these functions instead of joining directory names or
counting parents, so a change of layout is one edit here.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from quantsweep.core.config import QuantFormat

RESULTS_DIR = "results"
SEARCH_DIR = "search"
DEFERRED_DIR = "deferred"


def format_dir(sweep_dir: Path, fmt: QuantFormat) -> Path:
    """The sweep's directory for one quantization format (``int8-int8/per_channel``)."""
    return Path(sweep_dir) / fmt.name


def sweep_dir_of(path: Path, fmt: QuantFormat) -> Path:
    """The sweep run directory holding ``path``, a file written in ``format_dir(…, fmt)``."""
    depth = len(PurePosixPath(fmt.name).parts)
    return Path(path).resolve().parents[depth]


def results_dir(eval_dir: Path, target: str) -> Path:
    """One target's evaluation results (one record per artifact) in an evaluate run."""
    return Path(eval_dir) / RESULTS_DIR / target


def search_dir(eval_dir: Path, target: str) -> Path:
    """One target's search log, trial artifacts and ``search.json`` in an evaluate run."""
    return Path(eval_dir) / SEARCH_DIR / target


def deferred_dir(eval_dir: Path, target: str) -> Path:
    """One target's schemes whose writing materialize deferred, written when the evaluate run needed them."""
    return Path(eval_dir) / DEFERRED_DIR / target


def eval_dir_of_results(results: Path) -> Path:
    """The evaluate run directory of a ``results_dir``."""
    return Path(results).parents[1]
