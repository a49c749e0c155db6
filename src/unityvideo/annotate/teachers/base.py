"""The one small interface every teacher model shares, and helpers the teachers have in common."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

__all__ = ["Teacher", "Annotation", "check_frames", "batches", "resolve_device", "TeacherUnavailable"]


class TeacherUnavailable(ValueError):
    """A teacher cannot be built: a missing package, model file or option. The message says the fix."""


@dataclass
class Annotation:
    """A teacher's output for one clip: the raw array (CONTRACT layout, F first), extra raw arrays
    stored next to it in raw.npz (e.g. flow_valid) and JSON-able metadata (e.g. instances)."""

    raw: np.ndarray
    extras: dict[str, np.ndarray] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)


class Teacher:
    """A model that turns RGB frames uint8 (F, H, W, 3) into one modality's raw array.

    name: short description of the model (shown in logs and stored in raw.npz meta);
    modality: the canonical modality it produces;
    lookahead: frames after the clip the teacher should see (flow needs the next frame).
    Subclasses implement `annotate`; `__call__` returns just the raw array.
    """

    name: str = "teacher"
    modality: str = ""
    lookahead: int = 0

    def annotate(self, frames: np.ndarray) -> Annotation:
        raise NotImplementedError

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        return self.annotate(check_frames(frames, self.name)).raw

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.modality}: {self.name})"


def check_frames(frames: Any, who: str) -> np.ndarray:
    """Validate uint8 RGB frames (F, H, W, 3); the error names the teacher and the fix."""
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3 or len(frames) == 0:
        raise ValueError(f"{who}: expects uint8 RGB frames (F, H, W, 3) with F >= 1, got {frames.dtype} {frames.shape}")
    return frames


def batches(n: int, size: int) -> Iterator[slice]:
    """Consecutive slices of at most `size` items covering range(n)."""
    size = max(1, int(size))
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


def resolve_device(device: str | None) -> str:
    """'cuda' when available and not told otherwise, else 'cpu'."""
    if device:
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def model_folder(path: str | os.PathLike, option: str) -> Path:
    """A local transformers folder (config.json inside), or a clear error naming the option."""
    folder = Path(path).expanduser()
    if not (folder / "config.json").is_file():
        raise TeacherUnavailable(f"{option} {folder}: not a model folder (no config.json); pass a folder written "
                                 "by save_pretrained / downloaded from the hub beforehand")
    return folder


def load_transformers(folder: Path, option: str, auto_model: str, device: str):
    """(model, image processor) from a local folder, offline, in eval mode on `device`."""
    import transformers

    try:
        processor = transformers.AutoImageProcessor.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError) as error:
        raise TeacherUnavailable(f"{option} {folder}: no image processor (preprocessor_config.json) "
                                 f"could be loaded ({error}); save the processor next to the model") from None
    model = getattr(transformers, auto_model).from_pretrained(folder, local_files_only=True)
    return model.eval().to(device), processor
