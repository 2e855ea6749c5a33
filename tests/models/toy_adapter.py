"""A model adapter for ``.toy`` files, registered by tests/models/test_adapters.py."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from quantsweep.models.network import LoadedModel, StagedNetwork

LOADED: list[Path] = []


def accepts(path: Path) -> bool:
    """``.toy`` files only."""
    return path.suffix == ".toy"


def load_model(path, *, device, num_classes, head) -> LoadedModel:
    """A one-conv network, and the path remembered."""
    LOADED.append(Path(path))
    conv = nn.Conv2d(3, 4, 3)
    network = StagedNetwork(conv, [conv], ["0"], [-1], frozenset())
    return LoadedModel(
        name=Path(path).stem, source=str(path), network=network, class_names={0: "toy"}, end_to_end=False
    )
