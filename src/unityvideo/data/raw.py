"""Raw ground truth of a clip as one compressed .npz: arrays stay arrays, everything else
(caption, meta, instances, person_ids, ...) is stored as JSON text. Nothing is pickled, so
loading a file someone hands you is safe (np.load(allow_pickle=False))."""
from __future__ import annotations

import json
import zipfile
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["RawReadError", "save_raw", "load_raw"]

_JSON_KEYS = "__json_keys__"


class RawReadError(RuntimeError):
    """A raw-ground-truth .npz is missing or unreadable."""

    def __init__(self, path: str | Path, reason: str):
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"cannot read raw ground truth {self.path}: {reason}")


def _json_default(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot store {type(value).__name__} in raw.npz meta; use numbers, strings, lists, dicts or arrays")


def save_raw(path: str | Path, clip: Any, meta: dict[str, Any] | None = None) -> Path:
    """Save a clip's raw ground truth: a dict (or dataclass) of numpy arrays plus JSON-able values
    (caption, instances, ...); `meta`, if given, is stored under the key "meta"."""
    path = Path(path)
    items = asdict(clip) if is_dataclass(clip) else dict(clip)
    if meta is not None:
        if "meta" in items:
            raise ValueError("save_raw: pass meta either inside the clip dict or as meta=, not both")
        items["meta"] = meta
    arrays: dict[str, np.ndarray] = {}
    json_keys = []
    for key, value in items.items():
        if key == _JSON_KEYS:
            raise ValueError(f"save_raw: the key {_JSON_KEYS!r} is reserved")
        if isinstance(value, np.ndarray) and value.dtype != object:
            arrays[key] = value
        else:
            arrays[key] = np.array(json.dumps(value, default=_json_default))
            json_keys.append(key)
    arrays[_JSON_KEYS] = np.array(json.dumps(json_keys))
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as handle:  # a file handle keeps numpy from appending '.npz'
        np.savez_compressed(handle, **arrays)
    return path


def load_raw(path: str | Path) -> dict[str, Any]:
    """Load what save_raw wrote: arrays as numpy arrays, the other values decoded from JSON."""
    path = Path(path)
    if not path.is_file():
        raise RawReadError(path, "file not found")
    try:
        with np.load(path, allow_pickle=False) as data:
            items = {key: data[key] for key in data.files}
        json_keys = json.loads(str(items.pop(_JSON_KEYS))) if _JSON_KEYS in items else []
        for key in json_keys:
            items[key] = json.loads(str(items[key]))
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
        raise RawReadError(path, f"not a readable raw.npz ({error})") from error
    return items
