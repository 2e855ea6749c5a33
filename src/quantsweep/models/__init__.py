"""Model adapters by name: each reads one framework's checkpoints into a :class:`LoadedModel`
(a framework-neutral :class:`~quantsweep.models.network.StagedNetwork` plus class names and head
kind); the rest of the tool sees only that. Ultralytics is the one built in.

An adapter is a module with ``accepts(path) -> bool`` and ``load_model(path, *, device,
num_classes, head) -> LoadedModel``; it is imported only when a model is loaded (Ultralytics is
slow to import and ``--help`` should not wait for it). Adding a framework is one module and one
:func:`register_adapter` call.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from quantsweep.core.config import HeadMode
from quantsweep.core.errors import InputError
from quantsweep.models.network import LoadedModel

# the checkpoint quantsweep runs on when no --model is given (trained on the synthetic shapes task)
BUNDLED_MODEL = Path(__file__).resolve().parent.parent / "assets" / "yolov10m-shapes.pt"

_ADAPTERS: dict[str, str] = {"ultralytics": "quantsweep.models.ultralytics_adapter"}


def register_adapter(name: str, module: str) -> None:
    """Make the adapter module ``module`` (dotted path) available under ``name``."""
    _ADAPTERS[name] = module


def adapter_for(path: str | Path):
    """The first registered adapter module that accepts ``path``."""
    for module in _ADAPTERS.values():
        adapter = importlib.import_module(module)
        if adapter.accepts(Path(path)):
            return adapter
    raise InputError(f"no model adapter reads {path} (adapters: {', '.join(_ADAPTERS)})")


def load_model(
    path: str | Path,
    *,
    device: str = "cpu",
    num_classes: int | None = None,
    head: HeadMode = HeadMode.AUTO,
) -> LoadedModel:
    """Load ``path`` through its adapter: BN folded, eval mode, on ``device``.

    A checkpoint is a pickle, so loading one can run code: only paths the user gave are loaded.
    """
    return adapter_for(path).load_model(path, device=device, num_classes=num_classes, head=head)


__all__ = ["BUNDLED_MODEL", "LoadedModel", "adapter_for", "load_model", "register_adapter"]
