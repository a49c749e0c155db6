"""Files shipped with the package.

DEFAULT_CHECKPOINT: a tiny UnityVideo model trained on the procedural world with `unityvideo train`
(see its README.md); `unityvideo generate` and `unityvideo demo` use it when no checkpoint is given.
"""

from __future__ import annotations

from pathlib import Path

DEFAULT_CHECKPOINT = Path(__file__).resolve().parent / "tiny-world"


def checkpoint_label(folder: str | Path) -> str:
    """How a results file names a checkpoint: the shipped one by name and training step (its install
    path differs from machine to machine), any other by the path it was given."""
    if Path(folder).resolve() != DEFAULT_CHECKPOINT:
        return str(folder)
    from unityvideo.models.checkpoint import load_checkpoint_spec  # lazy: keep this package light

    return f"shipped {DEFAULT_CHECKPOINT.name} (step {load_checkpoint_spec(DEFAULT_CHECKPOINT).step})"
