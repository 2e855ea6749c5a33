"""JSON records that stages exchange: versioned, written atomically, appended line by line."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from quantsweep.core.errors import InputError

SCHEMA_VERSION = 2  # 2: per-target candidates and results (deployment targets)


def _clean(value: Any) -> Any:
    # JSON has no inf/nan; null keeps files loadable by any reader.
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def write_json(path: Path, kind: str, payload: dict[str, Any]) -> None:
    """Write ``payload`` with ``schema_version`` and ``kind``, atomically (no half-written file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    record = {"schema_version": SCHEMA_VERSION, "kind": kind, **_clean(payload)}
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(tmp, path)


def read_json(path: Path, kind: str) -> dict[str, Any]:
    """Read a record written by :func:`write_json`, checking its kind and schema version."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path} not found")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise InputError(f"{path} is not valid JSON: {exc}") from None
    if data.get("kind") != kind:
        raise InputError(f"{path} holds a '{data.get('kind')}' record, expected '{kind}'")
    if data.get("schema_version") != SCHEMA_VERSION:
        raise InputError(
            f"{path} has schema version {data.get('schema_version')}, this quantsweep reads "
            f"{SCHEMA_VERSION}: re-run that stage with this version"
        )
    return data


def write_text_atomic(path: Path, text: str) -> None:
    """Replace a text file in one step."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class JsonLines:
    """An append-only log of records, flushed and synced per line so a kill loses nothing finished."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _scan(self) -> tuple[list[dict[str, Any]], int, int]:
        data = self.path.read_bytes() if self.path.exists() else b""
        records, good_end = [], 0
        for line in data.splitlines(keepends=True):
            if not line.endswith(b"\n"):
                break
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                break
            good_end += len(line)
        return records, good_end, len(data)

    def read(self) -> list[dict[str, Any]]:
        """All complete records; a torn last line (a kill mid-write) is not returned. Never writes."""
        return self._scan()[0]

    def append(self, record: dict[str, Any]) -> None:
        """Append one record durably, first cutting off a torn tail left by an earlier crash."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _, good_end, size = self._scan()
        if good_end < size:
            with self.path.open("r+b") as handle:
                handle.truncate(good_end)
        with self.path.open("a") as handle:
            handle.write(json.dumps(_clean(record)) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
