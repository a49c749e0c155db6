"""Files shipped with the package.

DEFAULT_CHECKPOINT: a tiny UnityVideo model trained on the procedural world with `unityvideo train`
(see its README.md); `unityvideo generate` and `unityvideo demo` use it when no checkpoint is given.
"""

from pathlib import Path

DEFAULT_CHECKPOINT = Path(__file__).resolve().parent / "tiny-world"
