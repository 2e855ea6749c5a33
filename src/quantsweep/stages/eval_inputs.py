"""What an evaluate run was measured on, recorded at its start and compared when it is resumed.

Results of different data must never be mixed in one run directory: a resume whose candidates,
data, image root, image count or image/label content differ from the recorded ones is refused,
naming the field.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from quantsweep.core.errors import InputError
from quantsweep.core.records import read_json
from quantsweep.data.images import Batch

# recorded key -> how the user names it; compared in this order so that the first difference named
# is the one the user changed (a changed --data also changes the content hash)
FIELDS = {
    "candidates_dir": "--candidates",
    "data": "--data",
    "image_root": "--image-root",
    "eval_images": "--eval-images",
    "images_loaded": "number of evaluation images",
    "data_sha256": "evaluation data content (sha256 of the letterboxed images and labels)",
}


def _resolved(path: str | Path | None) -> str | None:
    return None if path is None else str(Path(path).resolve())


def batch_digest(batch: Batch) -> str:
    """sha256 of the letterboxed images and their labels, exactly as evaluated."""
    digest = hashlib.sha256(np.ascontiguousarray(batch.images.numpy()).tobytes())
    for labels in batch.labels or []:
        digest.update(np.ascontiguousarray(labels, dtype=np.float32).tobytes())
        digest.update(b"|")  # image boundary: moving a box to another image changes the digest
    return digest.hexdigest()


def eval_inputs(
    *, candidates_dir: Path, data: str, image_root: str | None, eval_images: int, batch: Batch
) -> dict[str, Any]:
    """The resolved inputs of an evaluation, for ``eval_config.json``."""
    return {
        "candidates_dir": _resolved(candidates_dir),
        "data": _resolved(data),
        "image_root": _resolved(image_root),
        "eval_images": eval_images,
        "images_loaded": len(batch.images),
        "data_sha256": batch_digest(batch),
    }


def check_resume(run_dir: Path, current: dict[str, Any]) -> None:
    """Refuse (InputError, exit 2) to resume ``run_dir`` with inputs other than the recorded ones."""
    recorded = read_json(Path(run_dir) / "eval_config.json", "eval_config").get("inputs")
    if recorded is None:
        raise InputError(
            f"--resume {run_dir}: the run records no resolved inputs (older version); start a new run"
        )
    for key, name in FIELDS.items():
        if recorded.get(key) != current.get(key):
            raise InputError(
                f"--resume {run_dir} was evaluated with a different {name}: "
                f"recorded {recorded.get(key)}, now {current.get(key)}"
            )
